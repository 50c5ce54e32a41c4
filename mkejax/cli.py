"""The ``mkejax`` command line.

Subcommands (each with ``--help``)::

    mkejax config CONFIG [--set KEY=VALUE ...] [--hparams]   validate a config, print it resolved with its hash
    mkejax generate [PROMPT ...] [--model SOURCE]             load a model and print a greedy completion

``CONFIG`` is a YAML path or the name of a shipped config (``demo``, ``llama3.1-8b_memit``, ...). Errors in
configs, sources or data print one line naming the file and key (``-v`` adds the traceback) and exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

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
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


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

        hp = cfg.edit.hparams()
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
    except (ValueError, OSError) as e:  # our errors are ValueErrors that name the file/key
        if args.verbose:
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
