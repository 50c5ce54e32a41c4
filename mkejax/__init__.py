"""mkejax: multilingual knowledge editing of LLMs in JAX by merging per-language edit vectors."""

__version__ = "0.1.0"
