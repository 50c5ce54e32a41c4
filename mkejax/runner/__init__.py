"""The experiment runner: key statistics -> per-language edit vectors -> every merge over the α and rank-ratio
grids -> evaluation -> report (Lee et al. 2026, arXiv 2605.13919), each expensive step an Orbax artefact.

Run directory (an experiment's ``output_dir``; ``runs/{name}`` by default)::

    run_dir/
      run.json                          experiment name, config hash, created/updated times, earlier config hashes
      config.yaml                       the resolved config of the latest run (``mkejax config`` prints the same)
      artefacts/                        Orbax artefacts (mkejax.checkpoint), each reused only on a fingerprint match
        stats/layer<L>/                 key second moment C_l [F, F] and its token count, per edited layer
        edits/<own|shared>_<langs>/     the per-language edit vectors {layer: ΔW [L, D, F]}, own or shared
                                        covariance; per-request diagnostics in its metadata
        merged/<variant>_a<α>_r<rank>/  a merged delta {layer: ΔW [D, F]} per merge variant (e.g. tsvm_shared), α
                                        and (TSVM only) rank ratio
        params/<variant>_a<α>_r<rank>/  full merged model parameters (only with ``save_params``)
        scores/<protocol>/...           per-language metric means [test languages, metrics] of one evaluated edit
        pre_edit/                       pre-edit locality predictions (`mkejax.eval.PreEditCache`)
      results/                          results.csv / .json (tidy scores), table.md, edit_diagnostics.csv,
                                        run_summary.json
      plots/                            PNG figures (cross-lingual heatmaps, metrics vs α, metrics vs rank ratio)
      report.md                         the report, linking results/ and plots/

What each artefact depends on (its fingerprint), so that a config change recomputes exactly what it affects:
statistics <- model weights up to the layer, corpus, sample, max length, batch size, seed; edits <- model,
tokenizer, requests, edit hyperparameters, statistics, covariance mode; merged <- edits, merge method and its
hyperparameters; scores <- model, evaluation set (requests, tokenizer, metrics, batching), the scored delta.
Changing the α grid therefore recomputes merges and scores of the new α values only, changing the requests
recomputes edits, merges and scores but not the statistics. A partial or corrupt artefact is moved aside and
recomputed (`mkejax.checkpoint`), so a run killed at any point resumes from its last complete artefact and ends
with the same numbers.

Identity: a run directory belongs to one experiment ``name``. Opening it with a config of another name is an
error (choose another ``output_dir``); opening it with a changed config of the same name logs what changed and
records the new config hash. A non-empty directory that is not a run directory is never written into. In a
multi-process run every process computes (artefacts are written collectively); results, plots and the report
are written by process 0 only.
"""

from mkejax.runner.report import write_run_report
from mkejax.runner.rundir import (
    ARTEFACTS,
    CONFIG_FILE,
    PLOTS,
    REPORT,
    RESULTS,
    RUN_FILE,
    MergeJob,
    RunDirError,
    edit_name,
    job_from_tag,
    merge_jobs,
    merged_name,
    params_name,
    prepare_run_dir,
    read_run_info,
    run_config,
    stats_name,
    targets_name,
)
from mkejax.runner.stages import STAGES, Runner, RunSummary, StageSummary, count_tokens, model_label, run

__all__ = [
    "ARTEFACTS",
    "CONFIG_FILE",
    "PLOTS",
    "REPORT",
    "RESULTS",
    "RUN_FILE",
    "STAGES",
    "MergeJob",
    "RunDirError",
    "RunSummary",
    "Runner",
    "StageSummary",
    "count_tokens",
    "edit_name",
    "job_from_tag",
    "merge_jobs",
    "merged_name",
    "model_label",
    "params_name",
    "prepare_run_dir",
    "read_run_info",
    "run",
    "run_config",
    "stats_name",
    "targets_name",
    "write_run_report",
]
