"""The stages of a run, in order, and the driver that runs them under the run directory's lock.

Each stage is a plain function of the :class:`~mkejax.runner.context.RunContext`: ``load`` (checks, model,
tokenizer, requests), ``statistics`` (:mod:`mkejax.runner.statistics`), ``edits`` (:mod:`mkejax.runner.edits`),
``merges`` and ``params`` (:mod:`mkejax.runner.merges`), ``evaluation`` (:mod:`mkejax.runner.evaluation`) and
``report``. See :mod:`mkejax.runner` for the run directory and what each artefact depends on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence

from mkejax.atomic import atomic_write_text
from mkejax.config import ExperimentConfig
from mkejax.distributed import barrier, is_main_process
from mkejax.runner import edits, evaluation, interference, merges, statistics
from mkejax.runner.context import RunContext, RunSummary
from mkejax.runner.lock import RunLock
from mkejax.runner.rundir import ARTEFACTS, RESULTS, prepare_run_dir

logger = logging.getLogger("mkejax.runner")

STAGES = ("load", "statistics", "edits", "merges", "params", "evaluation", "report")


def load(ctx: RunContext) -> None:
    """Checks the data (before the model, so a bad path fails fast), then loads the model and tokenizer."""
    _ = ctx.requests
    ctx.hparams.check_model(ctx.model.config.num_hidden_layers)
    _ = ctx.tokenizer


def report(ctx: RunContext, results):
    """``report.md``, the table and the plots (process 0); returns (table text, report path)."""
    table = path = None
    if is_main_process():
        from mkejax.runner.report import write_run_report

        path = write_run_report(ctx.run_dir, ctx.config, results, summary=ctx.summary())
        table_path = ctx.run_dir / RESULTS / "table.md"
        table = table_path.read_text(encoding="utf-8") if table_path.is_file() else None
    barrier(f"mkejax-report:{ctx.run_dir}")
    return table, path


def run(
    config: ExperimentConfig,
    *,
    resume: bool = True,
    until: str = "report",
    progress: bool = True,
    wait: float | None = None,
    reuse: Sequence[str | os.PathLike] = (),
) -> RunSummary:
    """Runs an experiment up to stage ``until`` and returns its summary.

    The run directory is locked for the whole run (a second run on it fails at once naming the holder, or waits
    ``wait`` seconds); its record (``config.yaml``, ``run.json``) is written once the config has validated.

    Args:
      config: the experiment (validated by :func:`mkejax.config.config_from_dict`).
      resume: reuse complete artefacts whose fingerprints match (False: delete the run's artefacts first).
      until: the last stage to run (one of :data:`STAGES`; ``params`` only with ``save_params``); earlier stages
        reuse their artefacts.
      progress: tqdm bars per stage (process 0).
      wait: seconds to wait for another run holding the directory; None fails at once.
      reuse: other run directories to copy artefacts from when their fingerprints match (statistics, target
        values, projections, pre-edit predictions of another method's run on the same model and data); they are
        read, never written.
    """
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; valid: {', '.join(STAGES)}")
    last = STAGES.index(until)
    with RunLock(config.run_dir, wait=wait):
        run_dir = prepare_run_dir(config)
        if not resume:
            if is_main_process() and (run_dir / ARTEFACTS).exists():
                logger.info("resume disabled: removing the artefacts of %s", run_dir)
                shutil.rmtree(run_dir / ARTEFACTS)
                (run_dir / ARTEFACTS).mkdir()
            barrier(f"mkejax-fresh:{run_dir}")
        ctx = RunContext(config, run_dir, fresh=not resume, progress=progress, reuse=reuse)
        results = table = path = None
        steps = {
            "load": load,
            "statistics": statistics.statistics_stage,
            "edits": edits.edits,
            "merges": merges.merges,
            "params": merges.params if config.save_params else None,
        }
        for name in STAGES[: last + 1]:
            if name == "evaluation":
                with ctx.stage(name):
                    results, pairs = evaluation.evaluation(ctx)
                    evaluation.save_results(ctx, results, pairs)
                    if config.evaluation.interference:
                        interference.interference(ctx, results)
            elif name == "report":
                with ctx.stage(name):
                    table, path = report(ctx, results)
            elif steps[name] is not None:
                with ctx.stage(name):
                    steps[name](ctx)
        summary = ctx.summary(results, table, path)
        if is_main_process():
            atomic_write_text(run_dir / RESULTS / "run_summary.json", json.dumps(summary.to_dict(), indent=1))
        for line in summary.format().splitlines():
            logger.info("%s", line)
        return summary
