"""Reading benchmark files by content: one read of the bytes, parsed with ``json``, digested with sha256.

Files used to be read through ``datasets.load_dataset("json")``, whose cache is keyed on the path and the
modification time: a file edited with its mtime kept (``os.utime``, a copy with ``cp -p``, some sync tools) came
back with its *old* records, and pandas-style type inference turned numeric strings such as ``"2006"`` into
integers, so a type error in record 2 was reported at record 0. Here nothing is cached: every call reads the
bytes, and the digest that callers use to key requests and artefacts is computed from those same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

from mkejax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class JsonFile:
    """A parsed JSON file and the sha256 of the bytes it was parsed from."""

    path: pathlib.Path
    data: object
    sha256: str


def locate_bad_record(text: str) -> tuple[int | None, str]:
    """For a JSON list that does not parse: the index of the first record that does not parse, and why."""
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:].startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        return None, "expected a JSON list of records"
    pos += 1
    index = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if text.startswith("]", pos):
            return None, "invalid JSON after the closing bracket"
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return index, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if text.startswith(",", pos):
            pos += 1
            index += 1
        elif text.startswith("]", pos):
            return None, "invalid JSON after the closing bracket"
        else:
            line = text.count("\n", 0, pos) + 1
            return index + 1, f"invalid JSON at line {line}: expected ',' or ']' between records"


def read_json_records(path: str | pathlib.Path) -> JsonFile:
    """Reads a JSON list of records (UTF-8) and the sha256 of its bytes.

    Raises:
      DataError: a missing file, bytes that are not UTF-8, invalid JSON (with the index of the first record that
        does not parse), or a top-level value that is not a list.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start})", file=str(path)) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        record, why = locate_bad_record(text)
        raise DataError(why, file=str(path), record=record) from e
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records, got {type(data).__name__}", file=str(path))
    return JsonFile(path, data, hashlib.sha256(raw).hexdigest())


def text_field(value, *, file: str, record: int, lang: str, field: str) -> str:
    """A required string field, stripped; a DataError naming file, record, language and field otherwise."""
    if value is None:
        raise DataError("missing field", file=file, record=record, lang=lang, field=field)
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", file=file, record=record, lang=lang,
                        field=field)  # fmt: skip
    value = value.strip()
    if not value:
        raise DataError("empty field", file=file, record=record, lang=lang, field=field)
    return value
