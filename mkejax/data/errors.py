"""Errors raised by the data layer: every message names the file, record, language and field it is about."""

from __future__ import annotations


class DataError(ValueError):
    """Malformed or unavailable data.

    Attributes:
      file: the file (or URL / dataset name) the problem is in, when known.
      record: the record index (0-based) in that file, when known.
      lang: the language code (as written in the file) the problem is in, when known.
      field: the field name, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: int | None = None,
        lang: str | None = None,
        field: str | None = None,
    ):
        self.file, self.record, self.lang, self.field = file, record, lang, field
        where = [
            f"{k} {v!r}" if isinstance(v, str) else f"{k} {v}"
            for k, v in (("file", file), ("record", record), ("language", lang), ("field", field))
            if v is not None
        ]
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class CorpusError(DataError):
    """A corpus for key statistics cannot be read (missing files, offline, exhausted before the token budget)."""
