"""Range examples of a real extraction against the sequential reference on the dense latents.

The reference (``test_range_examples.reference``: pure-Python hash, a loop with ``bisect``,
``sorted`` per (feature, bin)) runs on the dense latents' per-sample maxima; the extraction's
output must match it, and be bit-identical across chunkings, fan-ins, feature blocks, worker
counts and a resume. Windows are checked against the dense latents and the store's tokens.
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import zarr

from _extract_data import dense_latents, make_sae, make_store
from hvrt_dask.sae import range_examples as rx
from hvrt_dask.sae.extract import extract_features
from hvrt_dask.sae.extract.api import FAIL_AFTER_KEY, check_parameters
from hvrt_dask.sae.output import RANGE_ARRAYS, RANGE_DIM, dense_range_examples, open_output
from test_range_examples import reference

K, PRE, SUF, M, SEED = 6, 3, 2, 3, 11
RVARS = rx.OUTPUT_VARS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("range")
    acts, tokens, mask = make_store(root / "store", n=96, seq=16, d_in=12, chunk=16)
    tensors, cfg = make_sae(root / "sae", d_in=12, d_sae=40)
    z = dense_latents(acts, tensors, cfg).astype(np.float32)
    z[~mask] = 0
    return {"root": root, "store": str(root / "store"), "sae": str(root / "sae"), "tokens": tokens, "mask": mask, "z": z}


def run(data, out, **kw):
    kw = {"top_k": K, "prefix": PRE, "suffix": SUF, "range_examples": M, "seed": SEED, "progress": False, **kw}
    return extract_features(data["store"], data["sae"], out, **kw)


def load(path):
    """The output with its range examples read back through the sparse layout as the dense
    ``(feature, bin, range_slot[, window])`` view (what the reference is compared with)."""
    ds = open_output(path).load()
    dense = dense_range_examples(path)
    dims = ("feature", "bin", rx.SLOT_DIM)
    ds = ds.drop_vars([v for v in RANGE_ARRAYS if v in ds.variables] + ["range_start", "range_count"])
    return ds.assign({k: (dims + (("window",) if v.ndim == 4 else ()), v) for k, v in dense.items()})


def check_against_reference(ds, data, m=M, seed=SEED):
    z, mask, tokens = data["z"], data["mask"], data["tokens"]
    n, seq, d_sae = z.shape
    smax = z.max(axis=1)
    sarg = z.argmax(axis=1)  # z >= 0 and padding is 0: the first max is a valid token whenever smax > 0
    edges = ds.bin_upper.values[:-1].astype(np.float32)
    ref = reference(smax, sarg, edges, m, seed)
    assert ref, "the data has range examples"
    smp, val, pos = ds.range_sample.values, ds.range_value.values, ds.range_position.values
    assert smp.shape == (d_sae, len(edges) + 1, m)
    got = {}
    for f, b in zip(*np.nonzero((smp >= 0).any(axis=2))):
        live = smp[f, b] >= 0
        assert live.argmin() == live.sum() or live.all(), "live slots come first"
        got[(int(f), int(b))] = [(int(s), float(v), int(p)) for s, v, p in zip(smp[f, b][live], val[f, b][live], pos[f, b][live])]
    assert got == {k: [(s, v, p) for _, s, v, p in rows] for k, rows in ref.items()}
    assert np.isnan(val[smp < 0]).all() and (pos[smp < 0] == -1).all()
    # windows of every slot (empty slots: fill)
    wt, wa = ds.range_window_tokens.values, ds.range_window_acts.values
    offs = ds.window_offset.values
    live = smp >= 0
    q = pos[..., None] + offs
    inside = live[..., None] & (q >= 0) & (q < seq)
    ss = np.where(live, smp, 0)[..., None].repeat(offs.size, -1)
    qq = np.clip(q, 0, seq - 1)
    np.testing.assert_array_equal(wt, np.where(inside, tokens[ss, qq], -1))
    f = np.arange(d_sae)[:, None, None, None]
    np.testing.assert_array_equal(wa, np.where(inside & mask[ss, qq], z[ss, qq, f], np.nan).astype(np.float32))
    np.testing.assert_array_equal(wa[..., offs == 0][..., 0][live], val[live])


def assert_same(a, b):
    for v in RVARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


@pytest.fixture(scope="module")
def baseline(data):
    r = run(data, data["root"] / "baseline")
    ds = load(r.path)
    check_against_reference(ds, data)
    return ds


def test_reference_matches_and_config_recorded(baseline):
    cfg = baseline.attrs["config"]
    assert cfg["seed"] == SEED and cfg["range_examples"] == M
    assert baseline.sizes[rx.SLOT_DIM] == M


@pytest.mark.parametrize("chunk_samples,split_every", [(7, 2), (33, 8), (1, 4)])
def test_chunkings_and_fanins_identical(data, baseline, tmp_path, chunk_samples, split_every):
    r = run(data, tmp_path / "o", chunk_samples=chunk_samples, split_every=split_every)
    assert_same(load(r.path), baseline)


@pytest.mark.parametrize("feature_block", [1, 7, 16, 1000])
def test_feature_blocks_identical(data, baseline, tmp_path, feature_block):
    """7 and 16 do not divide d_sae = 40."""
    r = run(data, tmp_path / "o", chunk_samples=16, split_every=2, feature_block=feature_block)
    assert_same(load(r.path), baseline)


def test_two_workers_identical(data, baseline, tmp_path, client):
    r = run(data, tmp_path / "o", chunk_samples=12, split_every=3, feature_block=7, max_in_flight=3, client=client)
    assert len(r.workers) == 2
    assert_same(load(r.path), baseline)


def test_one_worker_identical(data, baseline, tmp_path, one_worker_cluster):
    from distributed import Client

    with Client(one_worker_cluster) as c:
        r = run(data, tmp_path / "o", chunk_samples=12, split_every=2, feature_block=16, client=c)
    assert len(r.workers) == 1
    assert_same(load(r.path), baseline)


def test_resume_identical_and_keys_enforced(data, baseline, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="injected failure"), dask.config.set({FAIL_AFTER_KEY: 3}):
        run(data, out, chunk_samples=8, feature_block=16, max_in_flight=1)
    # range examples are in the checkpoints (their live slots)
    with np.load(out / "partials" / "chunk-0000000-block-00000.npz") as zf:
        assert {"range.index", *rx.KEYS} <= set(zf.files)
    with pytest.raises(ValueError, match="'seed' differs"):
        run(data, out, chunk_samples=8, feature_block=16, seed=SEED + 1, resume=True)
    with pytest.raises(ValueError, match="'range_examples' differs"):
        run(data, out, chunk_samples=8, feature_block=16, range_examples=M + 1, resume=True)
    r = run(data, out, chunk_samples=8, feature_block=16, resume=True)
    assert r.n_resumed == 3
    assert_same(load(out), baseline)


def test_other_seed_and_m(data, tmp_path):
    r = run(data, tmp_path / "o", seed=SEED + 1, range_examples=2, feature_block=16)
    check_against_reference(load(r.path), data, m=2, seed=SEED + 1)


def test_disabled(data, tmp_path):
    ds = open_output(run(data, tmp_path / "o", range_examples=0).path)
    assert not set(RANGE_ARRAYS) & set(ds.variables) and RANGE_DIM not in ds.sizes
    assert ds.attrs["config"]["range_examples"] == 0
    # an output of format 2 (dense range arrays) is refused by every reader, naming the format
    zarr.open_group(str(tmp_path / "o"), mode="r+").attrs["format"] = "hvrt_dask.sae_features/2"
    with pytest.raises(ValueError, match="format 'hvrt_dask.sae_features/2' is not 'hvrt_dask.sae_features/3'"):
        open_output(tmp_path / "o")


def test_parameters_validated():
    assert check_parameters()["seed"] == dask.config.get("hvrt.seed-default")
    assert check_parameters()["range_examples"] == dask.config.get("hvrt.extract.range-examples")
    with pytest.raises(ValueError, match="range_examples"):
        check_parameters(range_examples=-1)
    with pytest.raises(TypeError, match="seed"):
        check_parameters(seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        check_parameters(seed=-3)


def test_site_shows_range_examples(data, baseline, tmp_path):
    """A site built from a real extraction carries its range examples on the feature pages' data."""
    import json

    from hvrt_dask.sae.site import build_site

    site = build_site(str(data["root"] / "baseline"), tmp_path / "site", tokenizer=None)
    data_dir = os.path.join(site.path, "data")

    def read(path):
        with open(path, encoding="ascii") as fh:
            text = fh.read()
        return json.loads(text[text.index(",") + 1 : -3])

    assert read(os.path.join(data_dir, "meta.js"))["has_range"]
    recs = {}
    for dp, _, fns in os.walk(os.path.join(data_dir, "feat")):
        for fn in fns:
            recs.update({r["f"]: r for r in read(os.path.join(dp, fn))["features"]})
    rs = baseline.range_sample.values
    assert sorted(recs) == list(range(rs.shape[0]))
    n_shown = 0
    for f, rec in recs.items():
        want = {int(b): rs[f, b][rs[f, b] >= 0].tolist() for b in np.flatnonzero((rs[f] >= 0).any(axis=1))}
        assert {b: [e[0] for e in exs] for b, exs in rec["range"]} == want
        n_shown += sum(len(exs) for _, exs in rec["range"])
    assert n_shown == int((rs >= 0).sum()) > 0


def test_repr_html_escapes(data, tmp_path):
    out = tmp_path / "<script>alert(1)</script>&\"x"
    r = run(data, out, range_examples=0)
    page = r._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "hvrt-dask site" in page
    ds = open_output(r.path)
    assert f"{ds.sizes['feature']:,} ({int(ds.dead.values.sum()):,} dead" in page
    assert f"{int(ds.attrs['n_valid_tokens']):,} valid tokens" in page
