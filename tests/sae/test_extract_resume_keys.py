"""``resume=True`` is refused, naming the key, for every key docs/extraction.md says must match
(store, SAE, chunking, feature block, top_k, histogram, NaN policy, seed, range examples) —
for an interrupted run, whose partials stay untouched, and for a complete output; a complete
output asked for other context windows is recomputed, not returned unchanged."""

from __future__ import annotations

import os
import shutil

import dask
import numpy as np
import pytest

from _extract_data import make_sae, make_store
from hvrt_dask.sae.extract import extract_features
from hvrt_dask.sae.extract.api import FAIL_AFTER_KEY
from hvrt_dask.sae.output import is_complete, open_output

BASE = {"top_k": 3, "chunk_samples": 8, "feature_block": 16, "prefix": 2, "suffix": 1}


def run(root, out, **kw):
    args = {**BASE, "store": root / "store", "sae": root / "sae", **kw}
    return extract_features(args.pop("store"), args.pop("sae"), out, progress=False, **args)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-keys")
    make_store(root / "store", n=40, seq=8, d_in=12, chunk=8)
    make_sae(root / "sae", d_in=12, d_sae=16)
    make_sae(root / "sae2", d_in=12, d_sae=16, seed=9)
    shutil.copytree(root / "store", root / "store-copy")  # same data, another path
    with pytest.raises(RuntimeError), dask.config.set({FAIL_AFTER_KEY: 2}):
        run(root, root / "partial")
    run(root, root / "complete")
    return root


CHANGES = [
    ({"chunk_samples": 16}, "'chunk_samples' differs"),
    ({"feature_block": 8}, "'feature_block' differs"),
    ({"top_k": 4}, "'top_k' differs"),
    ({"histogram_bins": 32}, "'histogram_edges' differs"),
    ({"histogram_range": (-3, 4)}, "'histogram_edges' differs"),
    ({"nonfinite": "mask"}, "'nonfinite' differs"),
    ({"seed": 43}, "'seed' differs"),
    ({"range_examples": 2}, "'range_examples' differs"),
    ({"store": "store-copy"}, "'store' differs"),
    ({"sae": "sae2"}, "the SAE changed"),
]


def _args(root, change):
    return {k: (root / v if k in ("store", "sae") else v) for k, v in change.items()}


@pytest.mark.parametrize("change, needle", CHANGES, ids=[next(iter(c)) for c, _ in CHANGES])
def test_interrupted_run_resume_refused(root, change, needle):
    part = root / "partial"
    before = sorted(os.listdir(part / "partials"))
    assert any(p.endswith(".done") for p in before)
    with pytest.raises(ValueError, match=needle):
        run(root, part, resume=True, **_args(root, change))
    assert sorted(os.listdir(part / "partials")) == before  # nothing reused, nothing lost
    assert not is_complete(part)


@pytest.mark.parametrize("change, needle", CHANGES, ids=[next(iter(c)) for c, _ in CHANGES])
def test_complete_output_resume_refused(root, change, needle):
    key = needle.split("'")[1] if "'" in needle else "sae_hash"
    with pytest.raises(ValueError, match=f"complete but was computed with different .*'{key}'"):
        run(root, root / "complete", resume=True, **_args(root, change))
    assert is_complete(root / "complete")


def test_complete_output_with_other_windows_is_recomputed(root, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(root / "complete", out, symlinks=True)
    first = open_output(out).load()
    assert first.sizes["window"] == BASE["prefix"] + BASE["suffix"] + 1
    run(root, out, resume=True, prefix=3, suffix=0)
    ds = open_output(out).load()
    assert ds["window_offset"].values.tolist() == [-3, -2, -1, 0]
    np.testing.assert_array_equal(ds["topk_sample"].values, first["topk_sample"].values)
    # the new window's last column is the example's own position: its activation is the top value
    live = ds["topk_sample"].values >= 0
    np.testing.assert_array_equal(ds["window_acts"].values[..., -1][live], ds["topk_value"].values[live])
