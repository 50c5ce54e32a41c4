"""Request tokenisation: subject-last positions from offsets, target tokens without BOS, padding, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mkejax.data.request import EditRequest
from mkejax.edit import ContextTemplates, RequestError, target_tokens, tokenize_requests

TEMPLATES = ContextTemplates.fixed(["Hello there. {}"])


def req(prompt, subject, target, i=0, rule="exact"):
    start = prompt.index(subject)
    span = None if rule == "last_token" else (start, start + len(subject))
    return EditRequest(id=i, lang="en", prompt=prompt, subject=subject, target=target, subject_span=span,
                       subject_rule=rule)  # fmt: skip


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_positions_targets_and_padding(tiny_checkpoint, name):
    from mkejax.models import load_tokenizer

    tok = load_tokenizer(tiny_checkpoint(name))
    requests = [req("The capital of Paris is", "Paris", "Berlin Mitte"), req("Danielle Darrieux speaks", "Danielle",
                "French", 1), req("The twin city of Lyon is", "Lyon", "Beirut", 2, rule="last_token")]  # fmt: skip
    b = tokenize_requests(tok, requests, TEMPLATES, pad_to=8)
    n, rows, t = b.input_ids.shape
    assert (n, rows) == (3, 3) and t % 8 == 0
    for i, r in enumerate(requests):
        tgt = tok(" " + r.target, add_special_tokens=False)["input_ids"]
        assert b.target_ids[i, : len(tgt)].tolist() == tgt and b.target_mask[i].sum() == len(tgt)
        if tok.bos_token_id is not None:
            assert tgt[0] != tok.bos_token_id
        for j in range(rows):
            ids, mask = b.input_ids[i, j], b.attention_mask[i, j]
            assert mask[-1] == 1 and np.all(np.diff(mask) >= 0)  # left padding
            shown = tok.decode(ids[: b.positions[i, j] + 1][mask[: b.positions[i, j] + 1] > 0])
            anchor = r.subject if j < rows - 1 and r.subject_rule != "last_token" else None
            if j == rows - 1:  # KL row "{subject} is a": ends at the subject
                assert shown.endswith(r.subject) and tok.decode(ids[mask > 0]).endswith(r.subject + " is a")
            elif anchor:
                assert shown.endswith(r.prompt[: r.subject_span[1]])
            else:  # last_token: the prompt's last token
                assert shown.endswith(r.prompt)
            if j < rows - 1:  # teacher forcing: the row continues with target[:-1]
                tp = b.target_positions[i, j, : len(tgt)]
                assert ids[tp[1:]].tolist() == tgt[:-1] and tp[-1] == t - 1
                assert tok.decode(ids[: tp[0] + 1][mask[: tp[0] + 1] > 0]).endswith(r.prompt)


def test_subject_inside_a_token_and_padding_entries(tiny):
    _, tok = tiny
    r = req("The capital of Paris is", "Pari", "Rome")  # "Paris" is one token: the edit goes there
    b = tokenize_requests(tok, [r], TEMPLATES, num_requests=3)
    assert tok.decode([b.input_ids[0, 0, b.positions[0, 0]]]).strip() == "Paris"
    assert (
        b.active.tolist() == [True, False, False] and b.attention_mask[1:].sum() == 2 * 3
    )  # one token per row
    assert b.select(slice(0, 1)).input_ids.shape == (1, *b.input_ids.shape[1:])


def test_leading_space_and_automatic_subject_span(tiny):
    """A target that already starts with a space gets no second one; a request built by hand finds its subject."""
    _, tok = tiny
    assert (
        target_tokens(tok, " Paris")
        == target_tokens(tok, "Paris")
        == tok(" Paris", add_special_tokens=False)["input_ids"]
    )
    r = EditRequest(id=0, lang="en", prompt="The capital of France is", subject="France", target="Lyon")
    assert r.subject_span == (15, 21) and r.prompt[slice(*r.subject_span)] == "France"
    with pytest.raises(ValueError, match="subject 'Spain' does not occur in prompt"):
        EditRequest(id=1, lang="en", prompt="The capital of France is", subject="Spain", target="Lyon")
    tail = EditRequest(
        id=2, lang="en", prompt="Capital of", subject="Spain", target="X", subject_rule="last_token"
    )
    assert tail.subject_span is None and tail.edit_char == len("Capital of") - 1


def test_errors(tiny):
    _, tok = tiny
    with pytest.raises(RequestError, match="empty target"):
        target_tokens(tok, "  ", "request en/3 field 'target'")
    skip = EditRequest(id=4, lang="fr", prompt="Qui est X", subject="Y", target="Z", subject_rule="skip")
    with pytest.raises(RequestError, match="fr/4.*skip"):
        tokenize_requests(tok, [skip], TEMPLATES)
    with pytest.raises(RequestError, match="first context template"):
        tokenize_requests(tok, [req("A B", "B", "C")], ContextTemplates((("X {}",),)))
    with pytest.raises(RequestError, match="num_requests"):
        tokenize_requests(tok, [req("A B", "B", "C"), req("A B", "B", "C")], TEMPLATES, num_requests=1)
    with pytest.raises(ValueError, match="exactly one"):
        ContextTemplates((("{}",), ("no placeholder",)))
