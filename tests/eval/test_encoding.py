"""Answer-token boundary, bucketing and fixed-shape batches."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fixtures import ID, build_hand_tokenizer

from mkejax.eval.encoding import answer_windows, bucket_ladder, encode_pairs, make_batches


def test_boundary_matches_easyedit_and_uses_the_spaced_answer(tiny):
    _, tok, _ = tiny("llama")
    (e,) = encode_pairs(tok, ["The capital of France is"], ["Paris"])
    prompt_ids = tok("The capital of France is")["input_ids"]
    spaced = tok(" Paris", add_special_tokens=False)["input_ids"]
    bare = tok("Paris", add_special_tokens=False)["input_ids"]
    assert spaced != bare  # byte-level BPE: "ĠParis" vs "P" "aris"
    assert e.n_context == len(prompt_ids) and not e.boundary_merged  # EasyEdit's count, here
    assert list(e.ids[: e.n_context]) == prompt_ids and list(e.ids[e.n_context :]) == spaced


def test_qwen_style_no_bos(tiny):
    _, tok, _ = tiny("qwen2")
    (e,) = encode_pairs(tok, ["The capital of France is"], ["Paris"])
    assert e.ids[0] != tok.bos_token_id
    assert list(e.ids[e.n_context :]) == tok(" Paris")["input_ids"]


def test_boundary_merge_rule():
    # "c " fuses the prompt's last letter with the space: prompt [<s> a b c], joint [<s> a b "c " d e].
    tok = build_hand_tokenizer(merge_c_space=True)
    (e,) = encode_pairs(tok, ["abc"], ["de"])
    assert list(e.ids) == [ID["<s>"], ID["a"], ID["b"], ID["c "], ID["d"], ID["e"]]
    assert e.n_context == 3 and e.n_answer == 3 and e.boundary_merged  # EasyEdit's count would say 4


@pytest.mark.parametrize(
    "prompt, answer, bos, message",
    [
        ("abc", "", True, "empty answer"),
        ("  ", "x", True, "empty prompt"),
        ("c", "d", False, "no context token"),
    ],
)
def test_bad_pairs(prompt, answer, bos, message):
    tok = build_hand_tokenizer(merge_c_space=True, bos=bos)
    with pytest.raises(ValueError, match=f"en/3 reliability: {message}"):
        encode_pairs(tok, [prompt], [answer], names=["en/3 reliability"])


def test_ladder():
    assert bucket_ladder(5) == (8,)
    assert bucket_ladder(17) == (8, 12, 16, 24)
    assert bucket_ladder(5000)[-1] == 6144


def test_batches_left_padded_fixed_shape():
    tok = build_hand_tokenizer()
    words = ["ab", "abcdefghij", "abcd", "abcdefghijklmnopq", "abc"]
    examples = encode_pairs(tok, words, ["xy"] * len(words))
    groups = ["edit", "edit", "locality", "edit", "edit"]
    batches = make_batches(examples, groups, batch_size=2, window=4)
    # Bucket 8 holds two "edit" rows (B = 2); buckets 16 and 24 one row each (B = 1, not 2 copies).
    assert {b.shape for b in batches} == {(2, 8, 4), (1, 16, 4), (1, 24, 4)}
    seen = np.concatenate([b.rows for b in batches])
    assert sorted(seen[seen >= 0]) == list(range(len(words)))
    for b in batches:
        assert len({groups[r] for r in b.rows if r >= 0}) == 1
        for r, i in enumerate(b.rows):
            src = examples[b.rows[0] if i < 0 else i].ids  # filler rows copy row 0
            np.testing.assert_array_equal(b.ids[r, -len(src) :], src)  # answer ends at the last column
            assert b.mask[r].sum() == len(src) and b.mask[r, -len(src) :].all()
    labels, valid = answer_windows(examples, 4)
    np.testing.assert_array_equal(labels[0], [0, 0, ID[" x"], ID["y"]])
    np.testing.assert_array_equal(valid[0], [False, False, True, True])
    with pytest.raises(ValueError, match="w3: 20 tokens exceed max_length 12"):
        make_batches(
            examples, groups, batch_size=2, window=4, max_length=12, names=[f"w{i}" for i in range(5)]
        )


def test_automatic_window_and_batch_sizes():
    tok = build_hand_tokenizer()
    # Answers of 2 tokens in short rows and 10 tokens in one long row; 5 short rows, 1 long one.
    examples = encode_pairs(tok, ["ab"] * 5 + ["abcdefghijklmno"], ["xy"] * 5 + ["abcdefghij"])
    batches = make_batches(examples, ["edit"] * 6, batch_size=4)
    # K = min(T - 1, the batch's longest answer rounded up to a power of two)
    assert sorted(b.shape for b in batches) == [(1, 32, 16), (4, 8, 2), (4, 8, 2)]
    batches = make_batches(examples, ["edit"] * 6, batch_size=8, batch_multiple=4)
    assert sorted(b.shape for b in batches) == [(4, 32, 16), (8, 8, 2)]
    # within a bucket, batches hold similar answer lengths: 4 answers of 1 token and 4 of 5 tokens
    mixed = encode_pairs(tok, ["ab"] * 8, ["x", "abcde"] * 4)
    batches = make_batches(mixed, ["edit"] * 8, batch_size=4)
    assert sorted(b.window for b in batches) == [1, 7]  # 5 -> 8, capped at T - 1 = 7
    with pytest.raises(ValueError, match="multiple of batch_multiple"):
        make_batches(examples, ["edit"] * 6, batch_size=6, batch_multiple=4)
