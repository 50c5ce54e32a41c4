"""Rollback and incremental languages for a whole run: the same experiment with a language removed or added.

The new run reads the source run directory as a read-only source of artefacts (``sources`` of
:class:`mkejax.checkpoint.ArtefactStore`): whatever the new run needs and the source holds with the same
fingerprint — key statistics, every kept language's target values and context templates, the method's prepared
statistics, the pre-edit predictions — is copied instead of computed: a removed language costs only the re-solved
edits (with a shared covariance, the others are re-solved with the smaller Gram), merges and scores; an added
language also optimises its own target values.
The result is that of a from-scratch run of the new language set (checked in the tests).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from mkejax.runner.context import RunSummary
from mkejax.runner.rundir import RunDirError, run_config


def change_languages(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    remove: Sequence[str] = (),
    add: Sequence[str] = (),
    until: str = "report",
    progress: bool = True,
    wait: float | None = None,
) -> RunSummary:
    """Runs the experiment of ``run_dir`` with ``remove`` taken out of and ``add`` put into its languages, in
    ``out_dir`` (a new run directory), reusing what the source run computed.

    Raises:
      RunDirError / ValueError: not a run directory, a removed language the run does not have, an added one it
        has, no language left, or an ``out_dir`` that is not empty.
    """
    from mkejax.config import config_from_dict
    from mkejax.runner.stages import run

    source = pathlib.Path(run_dir)
    config = run_config(source)
    langs = list(config.data.languages)
    missing = [lang for lang in remove if lang not in langs]
    present = [lang for lang in add if lang in langs]
    if missing:
        raise ValueError(f"{source}: cannot remove {missing}: the run's languages are {langs}")
    if present:
        raise ValueError(f"{source}: cannot add {present}: already among the run's languages {langs}")
    langs = [lang for lang in langs if lang not in remove] + list(add)
    if not langs:
        raise ValueError(f"{source}: removing {list(remove)} leaves no language")
    out = pathlib.Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} is not empty; choose a new directory for the changed run")
    raw = config.to_dict()
    raw["data"]["languages"] = langs
    raw["output_dir"] = str(out)
    new = config_from_dict(raw, source=f"{source} with languages {langs}")
    return run(new, until=until, progress=progress, wait=wait, reuse=(source,))
