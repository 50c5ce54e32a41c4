"""The stages of a run (load, statistics, edits, merges, params, evaluation, report) and their summary.

See :mod:`mkejax.runner` for the run directory and what each artefact depends on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Callable

import numpy as np

from mkejax.checkpoint import (
    ArtefactRecord,
    ArtefactStore,
    canonical,
    canonical_json,
    fingerprint,
    read_metadata,
)
from mkejax.config import ExperimentConfig
from mkejax.distributed import barrier, is_main_process
from mkejax.runner.rundir import (
    ARTEFACTS,
    RESULTS,
    MergeJob,
    _write_atomic,
    edit_name,
    merge_jobs,
    params_name,
    prepare_run_dir,
    stats_name,
    targets_name,
)

logger = logging.getLogger("mkejax.runner")

STAGES = ("load", "statistics", "edits", "merges", "params", "evaluation", "report")
# Merged deltas up to this total size stay in memory between the merge and evaluation stages.
_KEEP_MERGED_BYTES = 2 << 30
_REASONS = {
    "absent": "not computed before",
    "stale": "settings changed",
    "partial": "partial artefact",
    "corrupt": "corrupt artefact",
    "fresh": "--no-resume",
}


# ----------------------------------------------------------------------------------------------------- summary
@dataclasses.dataclass(frozen=True)
class StageSummary:
    """Wall and process CPU time of one stage and its artefacts: reused, and recomputed with the reason."""

    name: str
    seconds: float
    cpu_seconds: float
    cached: tuple[str, ...] = ()
    recomputed: tuple[tuple[str, str], ...] = ()


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
        lines = [f"{'stage':<12} {'wall s':>8} {'cpu s':>8} {'cached':>7} {'recomputed':>11}"]
        for s in self.stages:
            lines.append(
                f"{s.name:<12} {s.seconds:8.1f} {s.cpu_seconds:8.1f} {len(s.cached):7d} {len(s.recomputed):11d}"
            )
        total = sum(s.seconds for s in self.stages)
        lines.append(f"{'total':<12} {total:8.1f} {sum(s.cpu_seconds for s in self.stages):8.1f}")
        lines += [f"cached: {n}" for n in self.cached]
        lines += [f"recomputed: {n} ({why})" for n, why in self.recomputed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "stages": [dataclasses.asdict(s) for s in self.stages]}


# ------------------------------------------------------------------------------------------------------ runner
@dataclasses.dataclass(frozen=True)
class _Edits:
    """A loaded edit set: {layer: ΔW [L, D, F]} over ``languages``, its fingerprint and diagnostics."""

    deltas: dict
    languages: tuple[str, ...]
    fingerprint: str
    diagnostics: dict


def model_label(source: str) -> str:
    """A short model name for tables: the hub repo name, the GGUF file stem or the folder name."""
    text = source.split("#", 1)[0].rstrip("/")
    name = text.rsplit("/", 1)[-1]
    return name.removesuffix(".gguf") or text


def count_tokens(texts, tokenizer, max_length: int, encode_batch: int = 256) -> int:
    """The tokens `mkejax.data.tokens.token_batches` makes of ``texts`` (each text cut into framed chunks)."""
    from mkejax.data.tokens import special_frame

    prefix, suffix = special_frame(tokenizer)
    frame, body = len(prefix) + len(suffix), max_length - len(prefix) - len(suffix)
    total, batch = 0, []
    for item in itertools.chain(texts, [None]):
        if item is not None:
            batch.append(item[1])
        if batch and (item is None or len(batch) == encode_batch):
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                total += len(ids) + frame * -(-len(ids) // body)
            batch = []
    return total


class Runner:
    """Runs the stages of one experiment in its run directory; see the module docstring.

    Args:
      config: the experiment.
      resume: reuse complete artefacts with matching fingerprints (False: delete the run's artefacts first).
      progress: tqdm bars (process 0 only).
    """

    def __init__(self, config: ExperimentConfig, *, resume: bool = True, progress: bool = True):
        self.config = config
        self.progress = progress and is_main_process()
        self.run_dir = prepare_run_dir(config)
        self.fresh = not resume
        if self.fresh:
            if is_main_process() and (self.run_dir / ARTEFACTS).exists():
                logger.info("resume disabled: removing the artefacts of %s", self.run_dir)
                shutil.rmtree(self.run_dir / ARTEFACTS)
                (self.run_dir / ARTEFACTS).mkdir()
            barrier(f"mkejax-fresh:{self.run_dir}")
        self.store = ArtefactStore(self.run_dir, config_hash=config.config_hash(), log=self._store_log)
        self.stages: list[StageSummary] = []
        self._edits: dict[bool, _Edits] = {}
        self._merged: dict[str, tuple[dict, str]] = {}
        self._stats = None
        self._targets: dict | None = None

    # --------------------------------------------------------------------------------------------- plumbing
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
            self.stages.append(
                StageSummary(
                    name,
                    time.perf_counter() - start,
                    time.process_time() - cpu,
                    tuple(r.name for r in records if r.cached),
                    tuple((r.name, self._reason(r)) for r in records if not r.cached),
                )
            )

    def _reason(self, record: ArtefactRecord) -> str:
        reason = "fresh" if self.fresh and record.reason == "absent" else record.reason
        return _REASONS.get(reason, reason)

    def _bar(self, items, desc: str):
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, disable=not self.progress, leave=False)

    # -------------------------------------------------------------------------------------------- resources
    @functools.cached_property
    def hparams(self):
        return self.config.edit.hparams()

    @functools.cached_property
    def requests(self) -> dict:
        """{language: [EditRequest]} of the data section (loaded before the model, so bad paths fail fast)."""
        from mkejax.data import coverage_table, format_coverage, load_demo_facts, load_mzsre

        data = self.config.data
        if data.source == "demo":
            requests = load_demo_facts(data.languages, data.limit, policy=data.subject)
            logger.debug("%s", format_coverage(coverage_table(requests)))
        else:
            requests = load_mzsre(data.resolved_source(), data.languages, data.limit, policy=data.subject)
        return requests

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

    def load(self) -> None:
        """Validates hyperparameters and data, then loads the model and tokenizer."""
        # Cheap checks first: a typo or a missing data path fails before the model is loaded.
        _ = self.hparams, self.requests
        self.hparams.check_model(self.model.config.num_hidden_layers)
        _ = self.tokenizer

    # ---------------------------------------------------------------------------------------------- stages
    def statistics(self):
        """Key statistics C_l of the edited layers (`mkejax.edit.key_statistics`, cached per layer)."""
        if self._stats is not None:
            return self._stats
        from mkejax.data import load_corpus
        from mkejax.data.tokens import token_batches
        from mkejax.edit.stats import key_statistics, stats_settings

        cfg, model, tok = self.config.statistics, self.model, self.tokenizer
        layers = tuple(self.hparams.layers)
        corpus = load_corpus(cfg.corpus)
        max_length = cfg.max_length or model.config.max_position_embeddings
        seed = self.config.seed
        source = {
            "corpus": corpus.fingerprint(),
            "tokenizer": self.tokenizer_digest,
            "samples": cfg.samples,
            "tokens": cfg.tokens,
            "max_length": max_length,
            "batch_size": cfg.batch_size,
            "seed": seed,
        }
        paths = {l: self.store.path(stats_name(l)) for l in layers}
        fps = {l: fingerprint(stats_settings(model, l, source)) for l in layers}
        before = {l: (p.exists(), read_metadata(p)) for l, p in paths.items()}
        consumed = []

        def batches():
            consumed.append(True)
            if cfg.samples is None:
                texts, total = corpus.texts(seed), cfg.tokens
            else:  # a document sample: count its tokens first (token_batches yields an exact total)
                total = count_tokens(itertools.islice(corpus.texts(seed), cfg.samples), tok, max_length)
                total = min(total, cfg.tokens or total)
                texts = itertools.islice(corpus.texts(seed), cfg.samples)
            yield from token_batches(
                texts, tok, max_length=max_length, batch_size=cfg.batch_size, total_tokens=total
            )

        start = time.perf_counter()
        stats = key_statistics(
            model,
            batches(),
            layers=layers,
            source=source,
            cache_dir=self.store.path("stats"),
            mesh=self.mesh,
            total_tokens=cfg.tokens,
            progress=self.progress,
        )
        seconds = time.perf_counter() - start
        for l in layers:
            existed, meta = before[l]
            after = read_metadata(paths[l])
            hit = (
                meta is not None
                and meta.get("fingerprint") == fps[l]
                and (not consumed or (after is not None and after.get("created") == meta.get("created")))
            )
            if hit:
                reason = "hit"
            elif not existed:
                reason = "absent"
            elif meta is None:
                reason = "partial"
            else:
                reason = "stale" if meta.get("fingerprint") != fps[l] else "corrupt"
            self.store.records.append(ArtefactRecord(stats_name(l), hit, reason, seconds / len(layers)))
        self._stats = stats
        return stats

    def needed_edit_modes(self) -> tuple[bool, ...]:
        """Covariance modes the merges and protocols need: False = own, True = shared."""
        modes = {v.shared_cov for v in self.config.merge.variants}
        if "cross_lingual" in self.config.evaluation.protocols:
            modes.add(False)
        return tuple(sorted(modes))

    @functools.cached_property
    def request_digests(self) -> dict:
        """A digest per language (the full requests would make the metadata megabytes for 700 x 12 MzsRE)."""
        return {
            lang: {"count": len(reqs), "sha256": hashlib.sha256(canonical_json(reqs).encode()).hexdigest()}
            for lang, reqs in self.requests.items()
        }

    def edit_settings(self, shared_cov: bool) -> dict:
        stats = self.statistics()
        return {
            "kind": "edit_set",
            "version": 1,
            "model": self.model_digest,
            "tokenizer": self.tokenizer_digest,
            "method": self.config.edit.method,
            "hparams": canonical(self.hparams),
            "stats": {str(l): stats.fingerprints[l] for l in self.hparams.layers},
            "languages": list(self.config.data.languages),
            "requests": self.request_digests,
            "shared_cov": bool(shared_cov),
        }

    def targets(self) -> dict:
        """{language: Targets} of every language's requests (:func:`mkejax.edit.languages.language_targets`),
        optimised once for both covariance modes and cached as ``targets/<languages>``. They depend on the model,
        the requests, the templates and the target hyperparameters only: a new λ, statistics corpus, method
        (MEMIT <-> AlphaEdit with the same target settings) or covariance mode reuses them."""
        if self._targets is not None:
            return self._targets
        from mkejax.edit import Targets
        from mkejax.edit.languages import language_targets

        hp = self.hparams
        langs = tuple(self.config.data.languages)
        settings = {
            "kind": "targets",
            "version": 1,
            "model": self.model_digest,
            "tokenizer": self.tokenizer_digest,
            "target_hparams": canonical(hp.target_hparams()),
            "edit_layer": hp.edit_layer,
            "templates": canonical(hp.templates),
            "kl_prompt": hp.kl_prompt,  # the KL row of every request's batch
            "languages": list(langs),
            "requests": self.request_digests,
        }

        def compute():
            found = language_targets(
                self.model, self.tokenizer, self.requests, hp, mesh=self.mesh,
                template_cache=self.store.path("templates"),
            )  # fmt: skip
            if not found:
                raise ValueError(
                    "nothing to edit: every request of every language was skipped by the subject policy "
                    f"(data.subject: {self.config.data.subject}); see the coverage table with -v"
                )
            return {lang: dataclasses.asdict(t) for lang, t in found.items()}

        tree, _ = self.store.get_or_compute(targets_name(langs), settings, compute)
        self._targets = {
            lang: Targets(**{k: np.asarray(v) for k, v in t.items()}) for lang, t in tree.items()
        }
        return self._targets

    def edit_set(self, shared_cov: bool) -> _Edits:
        """The per-language edit vectors with own or shared covariance (`mkejax.edit.languages`)."""
        if shared_cov in self._edits:
            return self._edits[shared_cov]
        from mkejax.models.llama import layer_deltas

        langs = tuple(self.config.data.languages)
        name = edit_name(langs, shared_cov)
        settings = self.edit_settings(shared_cov)
        made: dict = {}

        def compute():
            from mkejax.edit import AlphaEditHparams, nullspace_projections
            from mkejax.edit.languages import edit_languages

            hp, stats = self.hparams, self.statistics()
            projections = None
            if isinstance(hp, AlphaEditHparams):  # P per (statistics, layer, τ), kept on disk across runs
                projections = nullspace_projections(
                    stats, hp.layers, hp.nullspace_threshold, cache_dir=self.store.path("projections")
                )
            result = edit_languages(
                self.model, self.tokenizer, self.requests, hp, stats,
                shared_cov=shared_cov, mesh=self.mesh, template_cache=self.store.path("templates"),
                targets=self.targets(), projections=projections,
            )  # fmt: skip
            if tuple(result.languages) != langs:
                raise ValueError(f"edit_languages returned languages {result.languages}, expected {langs}")
            made["diagnostics"] = {
                lang: [canonical(d) for d in result.diagnostics[lang]] for lang in result.languages
            }
            return {"deltas": layer_deltas(dict(result.deltas))}

        tree, cached = self.store.get_or_compute(
            name, settings, compute, metadata=lambda: {"languages": list(langs), **made}
        )
        diagnostics = made.get("diagnostics")
        if cached:
            diagnostics = (read_metadata(self.store.path(name)) or {}).get("diagnostics", {})
        edits = _Edits(tree["deltas"], langs, fingerprint(settings), diagnostics or {})
        self._edits[shared_cov] = edits
        return edits

    def edits(self) -> dict[bool, _Edits]:
        return {mode: self.edit_set(mode) for mode in self._bar(self.needed_edit_modes(), "edits")}

    def merged(self, job: MergeJob) -> tuple[dict, str]:
        """({layer: ΔW [D, F]}, fingerprint) of one merge job, cached as ``merged/...``.

        Every merge is linear in α (Sum, Mean, TSVM, TIES and task arithmetic scale their result by it), so the
        merge is computed once at α = 1 (itself an artefact) and other α values scale it; this equals a direct
        merge at α up to float32 rounding and saves the SVDs of TSVM per α.
        """
        if job.name in self._merged:
            return self._merged[job.name]
        from mkejax.merge import merge

        edits = self.edit_set(job.variant.shared_cov)
        settings = self._merge_settings(job)
        if job.alpha == 1.0:

            def compute():
                return {"deltas": merge(edits.deltas, job.variant.method, **settings["hparams"])}

        else:
            unit = dataclasses.replace(job, alpha=1.0)

            def compute():
                return {
                    "deltas": {l: (job.alpha * d).astype(d.dtype) for l, d in self.merged(unit)[0].items()}
                }

        tree, _ = self.store.get_or_compute(job.name, settings, compute)
        out = (tree["deltas"], fingerprint(settings))
        size = sum(int(np.prod(d.shape)) * d.dtype.itemsize for d in tree["deltas"].values())
        if size * (len(merge_jobs(self.config)) + 1) <= _KEEP_MERGED_BYTES:
            self._merged[job.name] = out
        return out

    def _merge_settings(self, job: MergeJob) -> dict:
        settings = {
            "kind": "merged",
            "version": 1,
            "edits": self.edit_set(job.variant.shared_cov).fingerprint,
            "method": job.variant.method,
            "hparams": job.hparams(self.config),
        }
        if job.alpha != 1.0:  # α · (the merge at α = 1)
            settings["scaled_from"] = fingerprint(self._merge_settings(dataclasses.replace(job, alpha=1.0)))
        return settings

    def merges(self) -> None:
        for job in self._bar(merge_jobs(self.config), "merges"):
            self.merged(job)

    def params(self) -> None:
        """Full merged parameters of every merge (``params/...``), for export."""
        from flax import nnx

        from mkejax.merge import apply
        from mkejax.models.llama import down_proj_path

        state = nnx.state(self.model)
        for job in self._bar(merge_jobs(self.config), "params"):
            delta, fp = self.merged(job)
            settings = {"kind": "params", "version": 1, "model": self.model_digest, "merged": fp}
            named = {down_proj_path(l): d for l, d in delta.items()}
            self.store.get_or_compute(
                params_name(job.variant, job.alpha, job.rank_ratio),
                settings,
                lambda named=named: nnx.to_pure_dict(apply(state, named)),
                metadata={"model_source": self.config.model.source, "dtype": self.config.model.dtype},
            )

    # ----------------------------------------------------------------------------------------- evaluation
    def _scores(self, name: str, delta_fp, delta_fn, evalset, cache):
        """Per-language means of one evaluated edit, cached as ``scores/...`` ([test languages, metrics])."""
        import pandas as pd

        from mkejax.eval import score, summarise

        langs, metrics = self.config.data.languages, self.config.evaluation.metrics
        settings = {"kind": "scores", "version": 1, "model": self.model_digest, "evalset": evalset.fingerprint,
                    "languages": list(langs), "metrics": list(metrics), "delta": delta_fp}  # fmt: skip

        def compute():
            per_request = score(self.model, evalset, delta_fn(), cache=cache, mesh=self.mesh, progress=False)
            summary = summarise(per_request)
            value = np.zeros((len(langs), len(metrics)), np.float64)  # [T, M]
            count = np.zeros((len(langs), len(metrics)), np.int64)
            for row in summary.itertuples(index=False):
                i, j = langs.index(row.test_lang), metrics.index(row.metric)
                value[i, j], count[i, j] = row.value, row.n
            return {"value": value, "n": count}

        tree, _ = self.store.get_or_compute(name, settings, compute)
        value, count = np.asarray(tree["value"]), np.asarray(tree["n"])
        rows = [
            (lang, metric, float(value[i, j]), int(count[i, j]))
            for i, lang in enumerate(langs)
            for j, metric in enumerate(metrics)
            if count[i, j] > 0
        ]
        return pd.DataFrame(rows, columns=["test_lang", "metric", "value", "n"])

    def evaluate(self):
        """Scores the configured protocols; returns the tidy results (`mkejax.eval.COLUMNS`)."""
        import pandas as pd

        from mkejax.eval import BASELINE, PreEditCache, prepare, tidy
        from mkejax.models.llama import down_proj_path

        cfg = self.config
        ev = cfg.evaluation
        from mkejax.sharding import DATA

        evalset = prepare(
            self.tokenizer, self.requests, metrics=ev.metrics, batch_size=ev.batch_size,
            batch_multiple=self.mesh.shape[DATA],
        )  # fmt: skip
        cache = PreEditCache(self.store.path("pre_edit"))
        run = {"model": model_label(cfg.model.source), "method": cfg.edit.method}
        jobs: list[tuple[str, Callable]] = []
        if "pre_edit" in ev.protocols:
            jobs.append(("scores/pre_edit", lambda: tidy(
                self._scores("scores/pre_edit", None, lambda: None, evalset, cache), **run, edit_lang=BASELINE
            )))  # fmt: skip
        if "merged" in ev.protocols:
            for job in merge_jobs(cfg):

                def one(job=job):
                    delta, fp = self.merged(job)
                    summary = self._scores(
                        f"scores/{job.name}", fp, lambda: {down_proj_path(l): d for l, d in delta.items()},
                        evalset, cache,
                    )  # fmt: skip
                    rank = job.effective_rank_ratio(len(cfg.data.languages))
                    return tidy(summary, **run, merge=job.variant.method, shared_cov=job.variant.shared_cov,
                                alpha=job.alpha, rank_ratio=rank)  # fmt: skip

                jobs.append((f"scores/{job.name}", one))
        if "cross_lingual" in ev.protocols:
            for i, lang in enumerate(cfg.data.languages):

                def alone(i=i, lang=lang):
                    edits = self.edit_set(False)
                    fp = {"edits": edits.fingerprint, "language": lang}
                    summary = self._scores(
                        f"scores/cross_lingual/{lang}", fp,
                        lambda: {down_proj_path(l): d[i] for l, d in edits.deltas.items()}, evalset, cache,
                    )  # fmt: skip
                    return tidy(summary, **run, shared_cov=False, edit_lang=lang)

                jobs.append((f"scores/cross_lingual/{lang}", alone))
        frames = [fn() for _, fn in self._bar(jobs, "evaluation")]
        return pd.concat(frames, ignore_index=True)

    def save_results(self, results) -> None:
        """results/results.csv + .json and results/edit_diagnostics.csv (process 0)."""
        from mkejax.eval import save_results

        if not is_main_process():
            return
        save_results(results, self.run_dir / RESULTS / "results")
        rows = [
            {"shared_cov": mode, **d}
            for mode, edits in sorted(self._edits.items())
            for lang in edits.languages
            for d in edits.diagnostics.get(lang, [])
        ]
        if rows:
            import pandas as pd

            with open(self.run_dir / RESULTS / "edit_diagnostics.csv", "w", encoding="utf-8") as f:
                pd.DataFrame(rows).to_csv(f, index=False)

    # ---------------------------------------------------------------------------------------------- driver
    def run(self, until: str = "report") -> RunSummary:
        """Runs the stages up to ``until`` (one of :data:`STAGES`; ``params`` only with ``save_params``)."""
        if until not in STAGES:
            raise ValueError(f"unknown stage {until!r}; valid: {', '.join(STAGES)}")
        last = STAGES.index(until)
        results = table = report = None
        steps = [
            ("load", self.load),
            ("statistics", self.statistics),
            ("edits", self.edits),
            ("merges", self.merges),
            ("params", self.params if self.config.save_params else None),
            ("evaluation", None),
            ("report", None),
        ]
        for i, (name, fn) in enumerate(steps[: last + 1]):
            if name == "evaluation":
                with self.stage(name):
                    results = self.evaluate()
                    self.save_results(results)
            elif name == "report":
                with self.stage(name):
                    if is_main_process():
                        from mkejax.runner.report import write_run_report

                        report = write_run_report(self.run_dir, self.config, results, summary=self._summary())
                        table_path = self.run_dir / RESULTS / "table.md"
                        table = table_path.read_text(encoding="utf-8") if table_path.is_file() else None
                    barrier(f"mkejax-report:{self.run_dir}")
            elif fn is not None:
                with self.stage(name):
                    fn()
        summary = self._summary(results, table, report)
        if is_main_process():
            _write_atomic(
                self.run_dir / RESULTS / "run_summary.json", json.dumps(summary.to_dict(), indent=1)
            )
        for line in summary.format().splitlines():
            logger.info("%s", line)
        return summary

    def _summary(self, results=None, table=None, report=None) -> RunSummary:
        return RunSummary(self.run_dir, tuple(self.stages), results, table, report)


def run(
    config: ExperimentConfig, *, resume: bool = True, until: str = "report", progress: bool = True
) -> RunSummary:
    """Runs an experiment (see the module docstring) and returns its summary.

    Args:
      config: the experiment.
      resume: reuse complete artefacts whose fingerprints match (False: start from scratch).
      until: the last stage to run (``statistics``, ``edits``, ``merges``, ``params``, ``evaluation``,
        ``report``); earlier stages reuse their artefacts.
      progress: tqdm bars per stage.
    """
    return Runner(config, resume=resume, progress=progress).run(until)
