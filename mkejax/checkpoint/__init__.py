"""Artefacts: the one fingerprinted, checksummed, atomically written cache mechanism of mkejax.

Every expensive or downloaded intermediate is an *artefact*, reused only when it is complete, intact and made
from the same settings:

- **array artefacts** (key statistics, edit vectors, merged deltas, projections, pre-edit predictions, merged
  parameters): string-keyed nested dicts of arrays written with Orbax (:mod:`mkejax.checkpoint.arrays`);
- **JSON artefacts** (context templates, diagnostics, small tables): :mod:`mkejax.checkpoint.json_artefacts`;
- **file artefacts** (downloaded or assembled files, verified by digest): :mod:`mkejax.checkpoint.files`.

Array and JSON artefacts are directories (payload, ``metadata.json``, ``COMPLETED`` written last) keyed by a
*fingerprint*: the sha256 of the canonical JSON of the settings they depend on (:func:`fingerprint`). On read
an artefact is absent, stale (another fingerprint: logged with what changed, deleted), partial (no marker) or
corrupt (unreadable, or shapes/dtypes/checksums differing from its metadata): partial and corrupt ones are moved
to ``.<name>.corrupt`` (the newest kept), and the caller recomputes. Writes go to a temporary sibling unique
to the writer and are renamed into place (:mod:`mkejax.atomic`); a failed write removes its temporary files
and raises one :class:`ArtefactError` line naming the artefact and the cause (e.g. a full disk).

:class:`ArtefactStore` holds the artefacts of one run directory (``run_dir/artefacts/<name>``) and records
each lookup. The layout of a run directory is described in :mod:`mkejax.runner`.
"""

from mkejax.checkpoint.arrays import load_artefact, save_artefact
from mkejax.checkpoint.files import DigestMismatchError, check_file, file_digest, verified_file
from mkejax.checkpoint.json_artefacts import load_json_artefact, save_json_artefact
from mkejax.checkpoint.layout import FORMAT, MARKER, METADATA, STATE, VALUE, ArtefactError, read_metadata
from mkejax.checkpoint.settings import canonical, canonical_json, fingerprint, package_versions, settings_diff
from mkejax.checkpoint.store import ArtefactRecord, ArtefactStore

__all__ = [
    "FORMAT",
    "MARKER",
    "METADATA",
    "STATE",
    "VALUE",
    "ArtefactError",
    "ArtefactRecord",
    "ArtefactStore",
    "DigestMismatchError",
    "canonical",
    "canonical_json",
    "check_file",
    "file_digest",
    "fingerprint",
    "load_artefact",
    "load_json_artefact",
    "package_versions",
    "read_metadata",
    "save_artefact",
    "save_json_artefact",
    "settings_diff",
    "verified_file",
]
