"""The error the model loaders raise (its own module, so that every loading module can import it)."""

from __future__ import annotations


class LoadError(ValueError):
    """A model or tokenizer cannot be loaded from a source; the message names the file and the keys."""
