"""What the stages of a run share: the config, the artefact store, the resources loaded once (model, tokenizer,
requests, mesh) with their digests, the results of earlier stages, and the time and artefact record of each stage.

Stages are plain functions of a :class:`RunContext` (:mod:`mkejax.runner.stages`); each artefact's settings
come from one function next to the stage that makes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import pathlib
import sys
import time

from mkejax.checkpoint import ArtefactRecord, ArtefactStore, canonical_json
from mkejax.config import ExperimentConfig
from mkejax.distributed import is_main_process

logger = logging.getLogger("mkejax.runner")

_REASONS = {
    "absent": "not computed before",
    "stale": "settings changed",
    "partial": "partial artefact",
    "corrupt": "corrupt artefact",
    "fresh": "--no-resume",
}


def peak_rss_mb() -> float:
    """This process' peak resident set size so far, in MiB (0.0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0.0
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1 << 20) if sys.platform == "darwin" else kib / 1024  # macOS reports bytes, Linux KiB


@dataclasses.dataclass(frozen=True)
class StageSummary:
    """Wall and process CPU time of one stage, the process' peak resident memory at its end (the maximum so far,
    in MiB: 0 where the platform does not say) and its artefacts: reused, and recomputed with the reason."""

    name: str
    seconds: float
    cpu_seconds: float
    cached: tuple[str, ...] = ()
    recomputed: tuple[tuple[str, str], ...] = ()
    peak_rss_mb: float = 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class RunSummary:
    """What a run did: its stages, and (when it got that far) the tidy results, Markdown table and report."""

    run_dir: pathlib.Path
    stages: tuple[StageSummary, ...]
    results: object = None  # pandas.DataFrame of mkejax.eval.COLUMNS
    table: str | None = None
    report: pathlib.Path | None = None

    @property
    def cached(self) -> list[str]:
        return [n for s in self.stages for n in s.cached]

    @property
    def recomputed(self) -> list[tuple[str, str]]:
        return [r for s in self.stages for r in s.recomputed]

    def format(self) -> str:
        """The closing summary: a table of time per stage, then one line per artefact."""
        lines = [f"{'stage':<12} {'wall s':>8} {'cpu s':>8} {'cached':>7} {'recomputed':>11} {'peak MiB':>9}"]
        for s in self.stages:
            lines.append(
                f"{s.name:<12} {s.seconds:8.1f} {s.cpu_seconds:8.1f} {len(s.cached):7d} {len(s.recomputed):11d} "
                f"{s.peak_rss_mb:9.0f}"
            )
        total = sum(s.seconds for s in self.stages)
        lines.append(f"{'total':<12} {total:8.1f} {sum(s.cpu_seconds for s in self.stages):8.1f}")
        lines += [f"cached: {n}" for n in self.cached]
        lines += [f"recomputed: {n} ({why})" for n, why in self.recomputed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "stages": [dataclasses.asdict(s) for s in self.stages]}


def model_label(source: str) -> str:
    """A short model name for tables: the hub repo name, the GGUF file stem or the folder name."""
    text = source.split("#", 1)[0].rstrip("/")
    name = text.rsplit("/", 1)[-1]
    return name.removesuffix(".gguf") or text


class RunContext:
    """The shared state of one run (see the module docstring).

    Args:
      config: the experiment (validated).
      run_dir: its run directory (prepared).
      fresh: the artefacts were deleted first (``--no-resume``): absent ones are reported as such.
      progress: tqdm bars (process 0 only).
      reuse: other run directories whose artefacts are copied when their fingerprints match (read only; see
        :class:`mkejax.checkpoint.ArtefactStore`).
    """

    def __init__(
        self, config: ExperimentConfig, run_dir: pathlib.Path, *, fresh: bool, progress: bool, reuse=()
    ):
        self.config = config
        self.run_dir = run_dir
        self.fresh = fresh
        self.progress = progress and is_main_process()
        self.store = ArtefactStore(
            run_dir, config_hash=config.config_hash(), log=self._store_log, sources=tuple(reuse)
        )
        self.stages: list[StageSummary] = []
        self.memo: dict = {}  # results of earlier stages (statistics, targets, edit sets, merges)

    @staticmethod
    def _store_log(message: str) -> None:
        (logger.info if message.startswith("recomputing") else logger.debug)(message)

    @contextlib.contextmanager
    def stage(self, name: str):
        """Times a stage and collects the artefact records made during it."""
        start, cpu, first = time.perf_counter(), time.process_time(), len(self.store.records)
        logger.info("stage %s", name)
        try:
            yield
        finally:
            records = self.store.records[first:]
            self.stages.append(StageSummary(
                name, time.perf_counter() - start, time.process_time() - cpu,
                tuple(r.name for r in records if r.cached),
                tuple((r.name, self._reason(r)) for r in records if not r.cached), peak_rss_mb(),
            ))  # fmt: skip

    def _reason(self, record: ArtefactRecord) -> str:
        reason = "fresh" if self.fresh and record.reason == "absent" else record.reason
        return _REASONS.get(reason, reason)

    def bar(self, items, desc: str):
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, disable=not self.progress, leave=False)

    def summary(self, results=None, table=None, report=None) -> RunSummary:
        return RunSummary(self.run_dir, tuple(self.stages), results, table, report)

    # ------------------------------------------------------------------------------------------- resources
    @functools.cached_property
    def hparams(self):
        return self.config.edit.hparams()

    @functools.cached_property
    def requests(self) -> dict:
        """{language: [EditRequest]} of the data section (loaded before the model, so bad paths fail fast)."""
        from mkejax.data import coverage_table, format_coverage, load_requests

        data = self.config.data
        requests = load_requests(data.resolved_source(), data.languages, data.limit, data.subject)
        logger.debug("%s", format_coverage(coverage_table(requests)))
        return requests

    @functools.cached_property
    def corpus(self):
        from mkejax.data import load_corpus

        return load_corpus(self.config.statistics.corpus)

    @functools.cached_property
    def mesh(self):
        from mkejax.sharding import make_mesh

        return make_mesh(self.config.mesh.shape())

    @functools.cached_property
    def model(self):
        from mkejax.models import load_model

        return load_model(self.config.model.source, dtype=self.config.model.dtype, mesh=self.mesh)

    @functools.cached_property
    def tokenizer(self):
        from mkejax.models import load_tokenizer

        return load_tokenizer(self.config.model.source)

    @functools.cached_property
    def model_digest(self) -> str:
        from mkejax.edit.digest import model_digest

        return model_digest(self.model)

    @functools.cached_property
    def tokenizer_digest(self) -> str:
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @functools.cached_property
    def request_digests(self) -> dict:
        """A digest per language (the full requests would make the metadata megabytes for 700 x 12 MzsRE)."""
        return {
            lang: {"count": len(reqs), "sha256": hashlib.sha256(canonical_json(reqs).encode()).hexdigest()}
            for lang, reqs in self.requests.items()
        }

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.config.data.languages)
