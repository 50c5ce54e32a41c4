"""Per-language edit vectors in one call (``edit_languages``) against the single-language driver and the joint
baseline; language order, chunking, skipped languages, the EditSet pytree, and 12 languages on 8 devices.

Independent references: the single-language driver ``mkejax.edit.edit`` (one language at a time, its own
tokenisation, targets and layer loop) and, for the shared covariance, the joint edit of all languages' requests.
Tolerance: relative Frobenius error <= 1e-5 on every layer's delta.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import textwrap

import jax
import numpy as np
import pytest
from multidevice import run_on_devices

from mkejax.data import load_demo_facts
from mkejax.edit import (
    AlphaEditHparams,
    ContextTemplates,
    KeyStatistics,
    MemitHparams,
    RequestError,
    RomeHparams,
    TemplateSpec,
)
from mkejax.edit.languages import EditSet, edit_joint, edit_languages, edit_single, language_targets
from mkejax.models import down_proj_path, load_model, load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
TOL = 1e-5
LANGS = ("en", "de", "zh")
COUNTS = {"en": 3, "de": 2, "zh": 3}  # different request counts per language
# Per-language templates with different counts (P = 3, 2, 3): exercises row padding and the per-P target calls.
TEMPLATES = {
    "en": ContextTemplates.fixed(("The {}", "I think {}")),
    "de": ContextTemplates.fixed(("Heute {}",)),
    "zh": ContextTemplates.fixed(("The {}", "So {}")),
}
COMMON = {"v_loss_layer": 3, "clamp_norm_factor": 4.0, "v_lr": 0.5, "v_num_grad_steps": 6, "v_weight_decay": 1e-3,
          "kl_factor": 0.0625, "templates": TemplateSpec(fixed=("The {}", "I think {}"))}  # fmt: skip
MEMIT = MemitHparams(layers=(1, 2), mom2_update_weight=50.0, **COMMON)
ALPHAEDIT = AlphaEditHparams(layers=(1, 2), nullspace_threshold=0.3, l2=1.0, **COMMON)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def synthetic_stats(f: int, layers=(1, 2), seed: int = 0) -> KeyStatistics:
    """Well-conditioned second moments C = X Xᵀ / N + εI (eigenvalues spread around the threshold above)."""
    rng = np.random.default_rng(seed)
    out = {}
    for l in layers:
        x = rng.normal(size=(f, 4 * f))
        out[l] = (x @ x.T / (4 * f) * 0.5 + 0.01 * np.eye(f)).astype(np.float32)
    return KeyStatistics.from_arrays(out, tokens=100_000)


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    model, tok = load_model(path), load_tokenizer(path)
    facts = load_demo_facts(LANGS, limit=3)
    requests = {lang: facts[lang][: COUNTS[lang]] for lang in LANGS}
    return model, tok, requests, synthetic_stats(model.config.intermediate_size)


@pytest.fixture(scope="module")
def shared_set(setup):
    model, tok, requests, stats = setup
    return edit_languages(model, tok, requests, MEMIT, stats, shared_cov=True, templates=TEMPLATES)


def assert_deltas_close(got: dict, want: dict, what: str):
    assert set(got) == set(want), (what, sorted(got), sorted(want))
    for path, expected in want.items():
        assert np.isfinite(np.asarray(got[path])).all()
        err = rel(got[path], expected)
        assert err <= TOL, f"{what} {path}: relative error {err:.2e}"


@pytest.mark.parametrize("hparams", [MEMIT, ALPHAEDIT], ids=["memit", "alphaedit"])
def test_own_covariance_equals_single_language_edits(setup, hparams):
    """Own covariance: each language's delta (after its own multi-layer schedule) is its single-language edit."""
    model, tok, requests, stats = setup
    langs = LANGS if isinstance(hparams, MemitHparams) else ("de",)  # AlphaEdit: the single-language case
    subset = {lang: requests[lang] for lang in langs}
    es = edit_languages(model, tok, subset, hparams, stats, shared_cov=False, templates=TEMPLATES)
    assert es.languages == langs and not es.shared_cov
    # "de" is padded in requests (2 -> 3) and template rows (2 -> 3); "zh" would repeat "en"'s shapes.
    for lang in langs[:2]:
        want = edit_single(model, tok, subset, lang, hparams, stats, templates=TEMPLATES)
        got = es.single(lang)
        assert got.deltas[down_proj_path(1)].shape == (
            model.config.hidden_size,
            model.config.intermediate_size,
        )
        assert_deltas_close(got.deltas, want.deltas, f"{type(hparams).__name__} {lang}")
        assert len(got.diagnostics) == len(requests[lang])
        for a, b in zip(got.diagnostics, want.diagnostics, strict=True):
            assert (a.id, a.lang, a.skipped, a.steps) == (b.id, b.lang, b.skipped, b.steps)
            np.testing.assert_allclose(a.final_loss, b.final_loss, rtol=1e-4)


def test_shared_sum_equals_joint_for_one_layer(setup):
    """One edited layer: keys and residuals do not depend on earlier deltas, so the Sum (α = 1) of the shared-
    covariance deltas is the joint edit of all languages' requests, and the own-covariance Sum is not."""
    model, tok, requests, stats = setup
    hp = dataclasses.replace(MEMIT, layers=(2,))
    tmpl = TEMPLATES["en"]  # the joint batch has one template set
    # equal counts: the folded target batch [3·2, ...] has the joint batch's shapes (one compilation for both)
    requests = {lang: reqs[:2] for lang, reqs in requests.items()}
    joint = edit_joint(model, tok, requests, hp, stats, templates=tmpl)
    shared = edit_languages(model, tok, requests, hp, stats, shared_cov=True, templates=tmpl)
    own = edit_languages(model, tok, requests, hp, stats, shared_cov=False, templates=tmpl)
    assert_deltas_close(shared.merge("sum", alpha=1.0), joint.deltas, "shared Sum vs joint")
    assert rel(own.merge("sum")[down_proj_path(2)], joint.deltas[down_proj_path(2)]) > 1e-2
    assert len(joint.diagnostics) == 2 * len(LANGS)


def test_order_chunks_and_skipped_language(setup, shared_set):
    """Reversed language order, one language and two requests per call and an extra all-skipped language change
    nothing: every language keeps its delta (shared covariance couples them, so this checks the Gram), the Sum
    is invariant, the skipped language gets a zero delta and skipped diagnostics."""
    model, tok, requests, stats = setup
    dead = [
        dataclasses.replace(r, lang="xx", subject_span=None, subject_rule="skip") for r in requests["en"][:2]
    ]
    order = {"xx": dead, **{lang: requests[lang] for lang in reversed(LANGS)}}
    tmpl = {**TEMPLATES, "xx": TEMPLATES["en"]}
    es = edit_languages(
        model, tok, order, MEMIT, stats, shared_cov=True, templates=tmpl, lang_batch=1, request_batch=2
    )
    assert es.languages == ("xx", "zh", "de", "en")
    for lang in LANGS:
        assert_deltas_close(es.single(lang).deltas, shared_set.single(lang).deltas, f"reordered {lang}")
    for d in es.deltas.values():
        assert not np.asarray(d[0]).any()
    assert all(d.skipped for d in es.diagnostics["xx"])
    assert_deltas_close(
        es.merge("sum", alpha=1.3), shared_set.merge("sum", alpha=1.3), "Sum order invariance"
    )


def test_edit_set_pytree_and_orbax_roundtrip(setup, shared_set, tmp_path):
    import orbax.checkpoint as ocp

    model = setup[0]
    L, D, F = len(LANGS), model.config.hidden_size, model.config.intermediate_size
    assert shared_set.shared_cov and shared_set.languages == LANGS
    assert {k: v.shape for k, v in shared_set.deltas.items()} == {
        down_proj_path(l): (L, D, F) for l in (1, 2)
    }
    stacked = shared_set.stacked()
    assert sorted(stacked) == [1, 2] and stacked[1].shape == (L, D, F)
    doubled = jax.tree.map(lambda x: 2 * x, shared_set)  # a pytree: only the deltas are leaves
    assert isinstance(doubled, EditSet) and doubled.diagnostics == shared_set.diagnostics
    np.testing.assert_allclose(doubled.deltas[down_proj_path(1)], 2 * shared_set.deltas[down_proj_path(1)])
    assert jax.jit(lambda s: s.merge("mean"))(shared_set).keys() == shared_set.deltas.keys()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "edits", shared_set)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "edits", jax.tree.map(np.zeros_like, shared_set))
    assert isinstance(restored, EditSet) and restored.languages == LANGS
    for path, d in shared_set.deltas.items():
        np.testing.assert_array_equal(np.asarray(restored.deltas[path]), np.asarray(d))
    with pytest.raises(KeyError, match="have en, de, zh"):
        shared_set.single("fr")


def test_targets_computed_once_serve_both_modes(setup, shared_set):
    """Target values from ``language_targets`` (no statistics, no covariance mode) give the same shared-covariance
    edit as optimising them inside ``edit_languages``; targets for other requests are refused by name."""
    model, tok, requests, stats = setup
    targets = language_targets(model, tok, requests, MEMIT, templates=TEMPLATES)
    assert sorted(targets) == sorted(LANGS) and targets["de"].z.shape == (
        COUNTS["de"],
        model.config.hidden_size,
    )
    es = edit_languages(
        model, tok, requests, MEMIT, stats, shared_cov=True, templates=TEMPLATES, targets=targets
    )
    assert_deltas_close(es.deltas, shared_set.deltas, "given targets")
    assert es.diagnostics == shared_set.diagnostics
    with pytest.raises(ValueError, match="no target values for language 'zh'"):
        edit_languages(model, tok, requests, MEMIT, stats, shared_cov=False, templates=TEMPLATES,
                       targets={k: v for k, v in targets.items() if k != "zh"})  # fmt: skip
    short = {**targets, "en": jax.tree.map(lambda x: x[:1], targets["en"])}
    with pytest.raises(ValueError, match=r"targets\['en'\]: 1 target values for 3 edited requests"):
        edit_languages(
            model, tok, requests, MEMIT, stats, shared_cov=False, templates=TEMPLATES, targets=short
        )


def test_bad_input(setup):
    model, tok, requests, stats = setup
    rome = RomeHparams(layers=(1,), **COMMON)
    with pytest.raises(TypeError, match="MemitHparams or AlphaEditHparams"):
        edit_languages(model, tok, requests, rome, stats, shared_cov=False)
    with pytest.raises(RequestError, match="'de': no requests"):
        edit_languages(model, tok, {"en": requests["en"], "de": []}, MEMIT, stats, shared_cov=False)
    with pytest.raises(RequestError, match="no languages"):
        edit_languages(model, tok, {}, MEMIT, stats, shared_cov=False)
    with pytest.raises(ValueError, match="lang_batch"):
        edit_languages(model, tok, requests, MEMIT, stats, shared_cov=False, lang_batch=0)
    with pytest.raises(KeyError, match="no context templates for language 'de'"):
        edit_languages(
            model, tok, requests, MEMIT, stats, shared_cov=False, templates={"en": TEMPLATES["en"]}
        )
    with pytest.raises(Exception, match=r"no key statistics for layers \[3\]"):
        edit_languages(
            model, tok, requests, dataclasses.replace(MEMIT, layers=(1, 3)), stats, shared_cov=True
        )
    singular = KeyStatistics.from_arrays({l: np.zeros((128, 128), np.float32) for l in (1, 2)}, tokens=10)
    with pytest.raises(Exception, match="singular"):
        edit_languages(model, tok, requests, MEMIT, singular, shared_cov=True)


SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, pathlib, sys
    import numpy as np
    import jax
    assert jax.device_count() == 8, jax.devices()
    sys.path[:0] = [sys.argv[3], str(pathlib.Path(sys.argv[3]).parent)]  # this module and tests/ helpers
    from test_languages import MEMIT, synthetic_stats, rel
    from mkejax.data import MZSRE_LANGUAGES as LANGUAGES, load_demo_facts
    from mkejax.edit.languages import edit_languages
    from mkejax.models import load_model, load_tokenizer
    from mkejax.sharding import DATA, LANG, make_mesh
    model, tok = load_model(sys.argv[1]), load_tokenizer(sys.argv[1])
    facts = load_demo_facts(("en", "de", "zh"), limit=3)
    # 12 language tags over the 3 demo languages' first facts (rows of similar length, so that one target call
    # serves all of them), 1-2 requests each
    requests = {tag: facts[("en", "de", "zh")[i % 3]][i // 6 : i // 6 + 1 + i % 2] for i, tag in enumerate(LANGUAGES)}
    stats = synthetic_stats(model.config.intermediate_size)
    ref = edit_languages(model, tok, requests, MEMIT, stats, shared_cov=True)
    out = {}
    for shape in ({LANG: 8}, {LANG: 4, DATA: 2}):
        got = edit_languages(model, tok, requests, MEMIT, stats, shared_cov=True, mesh=make_mesh(shape))
        assert got.languages == tuple(LANGUAGES)
        for path, d in got.deltas.items():
            assert d.shape[0] == 12, d.shape
            out[f"{shape}: {path}"] = rel(d, ref.deltas[path])
    json.dump(out, open(sys.argv[2], "w"))
    """
)


@pytest.mark.multidevice
def test_twelve_languages_on_eight_devices(tiny_checkpoint, tmp_path):
    """12 languages sharded over 8 simulated devices (padded to 16; shared covariance, so the Gram is a psum
    across devices), and over 4 x 2 devices (languages x requests), equal the single-device run."""
    result = tmp_path / "out.json"
    run_on_devices(SCRIPT, tiny_checkpoint("llama"), result, pathlib.Path(__file__).parent, timeout=900)
    errors = json.loads(result.read_text())
    assert len(errors) == 2 * len(MEMIT.layers)
    assert all(v <= TOL for v in errors.values()), errors
