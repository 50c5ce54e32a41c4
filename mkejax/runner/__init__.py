"""The experiment runner: key statistics -> per-language edit vectors -> every merge over the α and rank-ratio
grids -> evaluation -> report (Lee et al. 2026, arXiv 2605.13919), each expensive step an artefact.

Run directory (an experiment's ``output_dir``; ``runs/{name}`` by default)::

    run_dir/
      .lock                             held by the running process (PID, host, command): one run at a time
      run.json                          experiment name, config hash, created/updated times, earlier configs
      config.yaml                       the resolved config of the latest run (written once it has validated)
      configs/<hash>.yaml               every config that produced artefacts here (artefacts name their hash)
      artefacts/                        artefacts (mkejax.checkpoint), each reused only on a fingerprint match
        stats/layer<L>/                 key second moment C_l [F, F] and its token count, per edited layer
        templates/<lang>/               generated context templates of a language (JSON)
        targets/<lang>/                 a language's target values (shared by both covariance modes)
        projections/layer<L>/           the method's prepared statistics (AlphaEdit's null-space projector)
        edits/<own|shared>_<langs>/     the per-language edit vectors {down_proj name: ΔW [L, D, F]}, the keys
                                        of each solve and the request mask; per-request diagnostics in metadata
        merged/<variant>_a<α>_r<rank>/  a merged delta {down_proj name: ΔW [D, F]} per variant, α and (TSVM
                                        only) rank ratio
        params/<variant>_a<α>_r<rank>/  full merged model parameters (only with ``save_params``)
        pre_edit/                       the unedited model's locality predictions
        scores/<protocol>/...           per-language metric means [test languages, metrics] of one scored edit
      results/                          results.csv / .json (tidy scores), table.md, edit_diagnostics.csv,
                                        run_summary.json
      plots/                            PNG figures (cross-lingual heatmaps, metrics vs α, metrics vs rank ratio)
      report.md                         the report, linking results/ and plots/

What each artefact depends on (its fingerprint; one settings function next to each stage), so that a config
change recomputes exactly what it affects: statistics <- model weights up to the layer, tokenizer, corpus
content, sample, seed; targets <- model, tokenizer, requests, templates, target hyperparameters; edits <- model,
requests, edit hyperparameters, statistics, targets, covariance mode; merged <- edits, merge method and its
hyperparameters; scores <- model, evaluation set, the scored delta. Changing the α grid therefore recomputes
merges and scores of the new α values only; changing λ recomputes edits but not targets or statistics. A partial
or corrupt artefact is moved aside and recomputed, so a run killed at any point resumes from its last complete
artefact and ends with the same numbers.

Identity: a run directory belongs to one experiment ``name``. Opening it with a config of another name is an
error; a changed config of the same name is logged with what changed and kept in ``configs/``. A non-empty
directory that is not a run directory is never written into. In a multi-process run every process computes
(artefacts are written collectively); process 0 holds the lock and writes results, plots and the report.
"""

from mkejax.runner.context import RunContext, RunSummary, StageSummary, model_label
from mkejax.runner.languages import change_languages
from mkejax.runner.lock import RunLock, RunLockedError
from mkejax.runner.report import write_run_report
from mkejax.runner.rundir import (
    ARTEFACTS,
    CONFIG_FILE,
    CONFIGS,
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
from mkejax.runner.stages import STAGES, run

__all__ = [
    "ARTEFACTS",
    "CONFIGS",
    "CONFIG_FILE",
    "PLOTS",
    "REPORT",
    "RESULTS",
    "RUN_FILE",
    "STAGES",
    "MergeJob",
    "RunContext",
    "RunDirError",
    "RunLock",
    "RunLockedError",
    "RunSummary",
    "StageSummary",
    "change_languages",
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
