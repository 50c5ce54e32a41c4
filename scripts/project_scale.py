"""Paper-and-pencil projection of a paper setup (700 MzsRE edits x 12 languages on an 8B model): FLOPs, memory
and time of every stage on one 80 GB GPU and on a TPU v5e-8 slice. Nothing is run; the arithmetic is below so
that every assumption can be checked and changed on the command line.

    python scripts/project_scale.py [--model llama3.1-8b|qwen2.5-7b] [--dtype float32|bfloat16] [--mfu 0.4]

FLOP counts (per token; a matmul of an [in, out] weight is 2·in·out FLOPs forward):
- a decoder layer forward: 2 x its parameters (q, k, v, o, gate, up, down) + attention 4·T·D;
- target values (MEMIT compute_z): each Adam step runs layers L+1 .. v_loss_layer forward and backward (gradients
  for activations only, the weights are constant: backward ~ forward) over P rewrite rows + 1 KL row per request,
  unembedding only answer positions (not counted: < 3 %); layers 0..L run once (not per step);
- keys: layers 0..l forward over the rewrite rows, per edited layer l and covariance mode;
- key statistics: layers 0..last edited forward + a rank-T update k kᵀ (2·F² per token) per edited layer;
- solves: one Cholesky F³/3 + triangular solves 2·F²·n per language (own) or once (shared) per layer; float64 on
  GPU, float32 at highest precision on TPU (6 bf16 passes);
- evaluation: a full forward per scored sequence (4 metrics x 743 records x 12 languages per merged edit).

Time = FLOPs / (peak x MFU). Peaks: H100 SXM 989 TFLOP/s bf16 dense, 495 TF32 (JAX's default float32 matmul
precision on GPU), 67 FP64; TPU v5e 197 TFLOP/s bf16 per chip (float32 matmuls at default precision run as bf16
passes; the HIGHEST-precision solve ~1/6 of peak).
"""

from __future__ import annotations

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    layers: int
    d: int
    f: int
    heads: int
    kv_heads: int
    vocab: int
    edit_layers: tuple[int, ...]
    v_loss_layer: int

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    def layer_params(self) -> int:
        q_o = 2 * self.d * self.d
        k_v = 2 * self.d * self.kv_heads * self.head_dim
        return q_o + k_v + 3 * self.d * self.f

    def params(self) -> int:
        return self.layers * self.layer_params() + 2 * self.vocab * self.d

    def layer_flops(self, t: int) -> float:  # per token, forward
        return 2 * self.layer_params() + 4 * t * self.d


MODELS = {
    "llama3.1-8b": Model("Llama-3.1-8B-Instruct", 32, 4096, 14336, 32, 8, 128256, (4, 5, 6, 7, 8), 31),
    "qwen2.5-7b": Model("Qwen2.5-7B-Instruct", 28, 3584, 18944, 28, 4, 152064, (4, 5, 6, 7, 8), 27),
}
GB = 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="llama3.1-8b")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights/activations")
    ap.add_argument("--langs", type=int, default=12)
    ap.add_argument("--per-lang", type=int, default=700)
    ap.add_argument(
        "--rows", type=int, default=6, help="rewrite rows per request (MEMIT: '{}' + 5 templates)"
    )
    ap.add_argument("--tokens", type=int, default=40, help="mean tokens per row (template + prompt + target)")
    ap.add_argument("--steps", type=int, default=25, help="Adam steps (no early stop assumed)")
    ap.add_argument("--stats-tokens", type=float, default=5e7, help="key-statistics tokens (100k articles)")
    ap.add_argument("--variants", type=int, default=6 * 3 + 2 * 3 * 2, help="merged edits scored")
    ap.add_argument("--mfu", type=float, default=0.4, help="achieved share of the matmul peak")
    args = ap.parse_args()

    m = MODELS[args.model]
    n_req = args.langs * args.per_lang
    t = args.tokens
    bytes_per = 4 if args.dtype == "float32" else 2
    last = m.edit_layers[-1]

    # ---- FLOPs -----------------------------------------------------------------------------------------------
    upper = (m.v_loss_layer - last) * m.layer_flops(t)  # layers L+1 .. v_loss_layer
    z_tokens = n_req * (args.rows + 1) * t
    f_targets = z_tokens * (last + 1) * m.layer_flops(t) + args.steps * z_tokens * 2 * upper
    f_keys = 2 * sum(n_req * args.rows * t * (l + 1) * m.layer_flops(t) for l in m.edit_layers)  # 2 modes
    f_stats = args.stats_tokens * ((last + 1) * m.layer_flops(512) + len(m.edit_layers) * 2 * m.f**2)
    n_solves = len(m.edit_layers) * (args.langs + 1)  # own: one per language; shared: one factorisation
    f_solve = n_solves * (m.f**3 / 3 + 2 * m.f**2 * args.per_lang * args.langs)
    f_eval_one = 4 * 743 * args.langs * t * (m.layers * m.layer_flops(t) + 2 * m.vocab * m.d * 0.1)
    f_eval = f_eval_one * (args.variants + 1 + args.langs)  # merged variants + pre-edit + 12 x 12 matrix

    # ---- memory (bytes) --------------------------------------------------------------------------------------
    weights = m.params() * bytes_per
    stats = len(m.edit_layers) * m.f**2 * 4  # float32 second moments
    deltas = len(m.edit_layers) * args.langs * m.d * m.f * 4  # one EditSet [L, D, F] per layer, float32
    solve = m.f**2 * 8  # one float64 system (lang_batch=1 bound; all 12 at once x12)
    # activations kept for the backward pass of one request's target values: per token and layer ~ 6 D-sized and
    # 3 F-sized tensors, over the rows x (upper layers)
    per_req = (args.rows + 1) * t * (m.v_loss_layer - last) * (6 * m.d + 3 * m.f) * bytes_per

    print(f"{m.name}: {m.params() / 1e9:.1f} B parameters, {args.dtype}; {args.langs} x {args.per_lang} edits, "
          f"{args.rows} rows x {t} tokens, {args.steps} steps; statistics {args.stats_tokens:.0e} tokens")  # fmt: skip
    print(f"\nFLOPs: targets {f_targets:.2e}, keys {f_keys:.2e}, statistics {f_stats:.2e}, solves {f_solve:.2e}, evaluation {f_eval:.2e}")  # fmt: skip
    print(f"memory: weights {weights / GB:.1f} GB, statistics {stats / GB:.1f} GB, one mode's edit vectors {deltas / GB:.1f} GB, one float64 "
          f"system {solve / GB:.2f} GB, target activations {per_req / GB:.2f} GB per request")  # fmt: skip

    h100 = 495e12 if args.dtype == "float32" else 989e12
    v5e8 = 8 * 197e12
    rows = [
        ("one H100 80 GB", h100, 67e12 * 0.5, 80 * GB, 1),
        ("TPU v5e-8", v5e8, v5e8 / 6 * 0.3, 128 * GB, 8),
    ]
    print(f"\n{'':<16} {'targets':>9} {'keys':>7} {'stats':>7} {'solves':>7} {'eval':>7} {'total':>7}   "
          "memory plan")  # fmt: skip
    for name, peak, solve_rate, hbm, chips in rows:
        rate = peak * args.mfu
        times = [f_targets / rate, f_keys / rate, f_stats / rate, f_solve / solve_rate, f_eval / rate]
        fixed = weights + stats + deltas + (solve if chips == 1 else 0)
        free = hbm - fixed - 0.1 * hbm  # 10 % for XLA workspace and fragmentation
        batch = max(1, int(free // per_req))
        plan = (f"weights+stats+deltas {fixed / GB:.0f} GB of {hbm / GB:.0f} GB -> request_batch <= {batch}"
                + (" (fsdp=8: weights sharded)" if chips > 1 else ", lang_batch=1"))  # fmt: skip
        cells = " ".join(f"{x / 60:6.0f}m" for x in times)
        print(f"{name:<16} {cells} {sum(times) / 3600:6.1f}h   {plan}")


if __name__ == "__main__":
    main()
