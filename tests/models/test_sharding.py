"""Partition rules, and loading + the jitted forward on 8 simulated CPU devices (a separate process, since
XLA_FLAGS must be set before jax starts) equal the single-device logits."""

from __future__ import annotations

import json
import pathlib
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P
from multidevice import run_on_devices

from mkejax.sharding import DATA, FSDP, PARAM_RULES, TENSOR, partition_spec

REPO = pathlib.Path(__file__).resolve().parents[2]


def _mesh(**sizes):
    names = (DATA, FSDP, TENSOR)
    return jax.sharding.AbstractMesh(tuple(sizes.get(n, 1) for n in names), names)


@pytest.mark.parametrize(
    ("name", "shape", "spec"),
    [
        ("embed_tokens.weight", (320, 64), P(TENSOR, FSDP)),
        ("lm_head.weight", (320, 64), P(TENSOR, FSDP)),
        ("layers.0.self_attn.q_proj.weight", (64, 64), P(TENSOR, FSDP)),
        ("layers.0.self_attn.k_proj.bias", (32,), P(TENSOR)),
        ("layers.0.self_attn.o_proj.weight", (64, 64), P(FSDP, TENSOR)),
        ("layers.3.mlp.gate_proj.weight", (128, 64), P(TENSOR, FSDP)),
        ("layers.3.mlp.down_proj.weight", (64, 128), P(FSDP, TENSOR)),
        ("layers.3.post_attention_layernorm.weight", (64,), P(None)),
        ("norm.weight", (64,), P(None)),
        ("layers.0.self_attn.q_proj.weight", (6, 64), P(None, FSDP)),  # 6 rows do not split 4 ways
    ],
)
def test_partition_rules(name, shape, spec):
    assert partition_spec(name, shape, _mesh(data=2, fsdp=2, tensor=4)) == spec


def test_every_parameter_has_a_rule():
    from flax import nnx

    from mkejax.models import CausalLM, ModelConfig
    from mkejax.sharding import param_name

    cfg = ModelConfig.from_hf_dict(
        {
            "model_type": "qwen2",
            "vocab_size": 32,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        }
    )
    state = nnx.state(nnx.eval_shape(lambda: CausalLM(cfg)))
    names = [param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert len(names) == 2 + 2 * 12 + 1  # embed, lm_head; per layer 12 (incl. q/k/v biases); norm
    for n in names:
        partition_spec(n, (32, 32) if n.endswith("weight") and "norm" not in n else (32,), _mesh())
    with pytest.raises(ValueError, match="no partition rule for parameter 'layers.0.mystery.weight'"):
        partition_spec("layers.0.mystery.weight", (4, 4), _mesh(), PARAM_RULES)


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax, jax.numpy as jnp
    from flax import nnx
    assert jax.device_count() == 8, jax.devices()
    from mkejax.models import load_model, load_tokenizer
    from mkejax.sharding import batch_sharding, make_mesh, param_shardings, shard_model

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    results = {}
    for folder in sys.argv[1:]:
        tok = load_tokenizer(folder)
        enc = tok(["The capital of France is", "Hi", "La capital de España es", "Die Hauptstadt"], padding=True,
                  padding_side="left", return_tensors="np")
        ids, mask = jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])
        graphdef, single_state = nnx.split(load_model(folder))

        @jax.jit
        def forward(state, ids, mask):
            return nnx.merge(graphdef, state)(ids, mask)

        single = np.asarray(forward(single_state, ids, mask))
        state = nnx.state(load_model(folder, mesh=mesh))
        specs = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            name = ".".join(str(getattr(k, "key", getattr(k, "idx", ""))) for k in path[:-1])
            assert len(leaf.sharding.device_set) == 8, name
            specs[name] = list(leaf.sharding.spec)
        want = param_shardings(state, mesh)
        assert jax.tree.all(jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), state, want))
        ids_s, mask_s = jax.device_put(ids, batch_sharding(mesh)), jax.device_put(mask, batch_sharding(mesh))
        sharded = forward(state, ids_s, mask_s)
        moved = nnx.state(shard_model(nnx.merge(graphdef, single_state), mesh))  # moved onto the mesh
        again = forward(moved, ids_s, mask_s)
        m = np.asarray(mask)[..., None]
        results[folder] = {
            "diff": float(np.abs((np.asarray(sharded) - single) * m).max()),
            "diff_moved": float(np.abs((np.asarray(again) - single) * m).max()),
            "specs": specs,
            "logits_devices": len(sharded.sharding.device_set),
        }
    print(json.dumps(results))
    """
)


@pytest.mark.multidevice
def test_load_onto_mesh_matches_single_device(tiny_checkpoint):
    folders = {name: str(tiny_checkpoint(name)) for name in ("qwen2", "llama3")}
    proc = run_on_devices(SCRIPT, *folders.values())
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, folder in folders.items():
        out = results[folder]
        assert out["diff"] <= 1e-5 and out["diff_moved"] <= 1e-5, (name, out)
        assert out["logits_devices"] == 8
        specs = out["specs"]
        assert specs["embed_tokens.weight"] == ["tensor", "fsdp"]
        assert specs["layers.0.mlp.down_proj.weight"] == ["fsdp", "tensor"]
        assert specs["layers.0.input_layernorm.weight"] in ([], [None])
        if name == "qwen2":  # biases, untied head
            assert specs["layers.0.self_attn.q_proj.bias"] == ["tensor"]
            assert specs["lm_head.weight"] == ["tensor", "fsdp"]
        else:
            assert "lm_head.weight" not in specs  # tied
