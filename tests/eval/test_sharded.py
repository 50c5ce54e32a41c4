"""Scoring with batch rows sharded over 8 simulated CPU devices equals single-device scoring (separate process:
XLA_FLAGS must be set before jax starts)."""

from __future__ import annotations

import json
import pathlib
import textwrap

import pytest
from multidevice import run_on_devices

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    assert jax.device_count() == 8, jax.devices()
    from mkejax.data.request import EditRequest
    from mkejax.eval import prepare, score
    from mkejax.models import load_model, load_tokenizer
    from mkejax.sharding import make_mesh

    folder = sys.argv[1]
    model, tok = load_model(folder), load_tokenizer(folder)
    words = "The capital of France is Paris Lyon Beirut Apple Berlin Madrid Praha".split()
    rng = np.random.default_rng(0)
    reqs = [EditRequest(id=i, lang="en", prompt=" ".join(rng.choice(words, 4)), subject="x",
                        subject_rule="last_token", target=" ".join(rng.choice(words, 2)),
                        locality_prompt=" ".join(rng.choice(words, 3)), locality_answer=str(rng.choice(words)))
            for i in range(12)]
    evalset = prepare(tok, {"en": reqs}, batch_size=8, batch_multiple=8, buckets=(32,), window=16)
    delta = {1: rng.normal(0, 0.03, (64, 128)).astype(np.float32)}
    single = score(model, evalset, delta, progress=False)
    mesh = make_mesh({"data": 4, "fsdp": 2})
    on_mesh = load_model(folder, mesh=mesh)  # parameters placed by the partition rules
    evalset = prepare(tok, {"en": reqs}, batch_size=8, batch_multiple=4, buckets=(32,), window=16)
    sharded = score(on_mesh, evalset, delta, mesh=mesh, progress=False)
    print(json.dumps({"single": single["value"].tolist(), "sharded": sharded["value"].tolist()}))
    """
)


@pytest.mark.multidevice
def test_sharded_rows_match_single_device(tiny_checkpoint):
    proc = run_on_devices(SCRIPT, tiny_checkpoint("llama"))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["single"]) == 24 and out["sharded"] == out["single"]
