"""The unit of editing: one fact in one language, with its evaluation prompts and resolved subject span."""

from __future__ import annotations

import dataclasses

from mkejax.data.languages import LANGUAGES, MZSRE_LANGUAGES  # noqa: F401  (re-exported)

# MzsRE file codes -> ISO 639-1 (the files say cz for Czech and du for Dutch).
FILE_TO_ISO = {"cz": "cs", "du": "nl"}
ISO_TO_FILE = {v: k for k, v in FILE_TO_ISO.items()}

# Subject-location rules, in the order the policy tries them (see mkejax.data.subject). "alias": the parallel
# English subject found in a translated prompt (MzsRE keeps many names in Latin script, e.g. in Thai prompts).
SUBJECT_RULES = ("exact", "normalized", "alias", "fuzzy", "last_token", "skip")


@dataclasses.dataclass(frozen=True)
class EditRequest:
    """One edit: rewrite ``prompt`` (which mentions ``subject``) to answer ``target``.

    Attributes:
      id: record index in the source (parallel across languages: record i is the same fact everywhere).
      lang: ISO 639-1 code (one of ``LANGUAGES``).
      prompt: the edit question / cloze prompt.
      subject: the subject string as the dataset gives it.
      target: the new answer.
      rephrase, locality_prompt, locality_answer, portability_prompt, portability_answer: evaluation pairs
        (None when the source has none).
      old_answer: the true answer before the edit (CounterFact / WikiFactDiff ``old``), None when unknown; the
        ``reliability_beats_old`` metric compares the target with it.
      subject_span: character span ``(start, end)`` of the subject in ``prompt``; None when the rule is
        ``last_token`` (edit at the prompt's last token) or ``skip``. Left out under the default rule
        ``exact``, it is found as the subject's first occurrence in the prompt (as EasyEdit's lookup does).
      subject_rule: which rule of the subject policy located the span (``SUBJECT_RULES``).
    """

    id: int
    lang: str
    prompt: str
    subject: str
    target: str
    rephrase: str | None = None
    locality_prompt: str | None = None
    locality_answer: str | None = None
    portability_prompt: str | None = None
    portability_answer: str | None = None
    old_answer: str | None = None
    subject_span: tuple[int, int] | None = None
    subject_rule: str = "exact"

    def __post_init__(self):
        if self.subject_rule not in SUBJECT_RULES:
            raise ValueError(f"subject_rule {self.subject_rule!r} not in {SUBJECT_RULES}")
        if self.subject_span is None and self.subject_rule == "exact" and self.subject:
            start = self.prompt.find(self.subject)
            if start < 0:
                raise ValueError(
                    f"request {self.lang}/{self.id}: subject {self.subject!r} does not occur in prompt "
                    f"{self.prompt!r}; give subject_span, or subject_rule='last_token' to edit at the prompt's end"
                )
            object.__setattr__(self, "subject_span", (start, start + len(self.subject)))
        if self.subject_span is not None:
            start, end = self.subject_span
            if not 0 <= start < end <= len(self.prompt):
                raise ValueError(
                    f"request {self.lang}/{self.id}: subject_span {self.subject_span} outside prompt"
                )
        elif self.subject_rule not in ("last_token", "skip"):
            raise ValueError(
                f"request {self.lang}/{self.id}: rule {self.subject_rule!r} needs a subject_span"
            )

    @property
    def edit_char(self) -> int:
        """Index of the last character of the edit position: the subject's end, or the prompt's end."""
        end = len(self.prompt) if self.subject_span is None else self.subject_span[1]
        return end - 1
