"""Runs never destroy data: every output target that is not ours is refused, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from hvrt_dask import ownership
from hvrt_dask.hvrt import read_output
from hvrt_dask.sae import export
from hvrt_dask.sae.site import build as site_build
from pipelines import outputs, runs
from pipelines.schema import from_dict

from _faults_helpers import make_sae, make_store


def snapshot(root) -> dict[str, str]:
    """Every file (content hash), directory and symlink under ``root``."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            p = os.path.join(dirpath, d)
            out[os.path.relpath(p, root)] = "link->" + os.readlink(p) if os.path.islink(p) else "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "link->" + os.readlink(p)
            else:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs of every stage, a user's directory and file, a run directory with a sibling run."""
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    data = root / "data.csv"
    data.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in rng.standard_normal((60, 3))))
    store = make_store(root / "acts.zarr", n=8, chunk=4)
    sae = make_sae(root / "sae")
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    user = root / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    (root / "notes.txt").write_text("a user's file")
    runs_dir = root / "runs"
    (runs_dir / "yesterday").mkdir(parents=True)
    (runs_dir / "yesterday" / "run.json").write_text("{}")
    (root / "link-to-data.csv").symlink_to(data)
    (root / "link-to-store").symlink_to(store)
    return root


SECTIONS = {
    "expand": lambda w: {"data": str(w / "data.csv"), "n": 30},
    "reduce": lambda w: {"data": str(w / "data.csv"), "n": 10},
    "capture": lambda w: {"source": "kjv", "model_dir": str(w / "model"), "layer": 0},
    "train_sae": lambda w: {"store": str(w / "acts.zarr"), "d_sae": 8, "steps": 2},
    "extract": lambda w: {"store": str(w / "acts.zarr"), "sae": str(w / "sae"), "top_k": 2, "prefix": 1, "suffix": 1},
}
INPUTS = {
    "expand": ["data.csv", "link-to-data.csv"],
    "reduce": ["data.csv", "link-to-data.csv"],
    "capture": ["model"],
    "train_sae": ["acts.zarr", "link-to-store"],
    "extract": ["acts.zarr", "sae", "link-to-store"],
}
OUT_KEY = {"train_sae": "out_dir"}


def targets(stage):
    common = ["user", "notes.txt", "runs/today", "runs", "cfg.yaml", "user/thesis.txt"]
    return common + INPUTS[stage]


CASES = [(s, t, flags) for s in SECTIONS for t in targets(s)
         for flags in ({}, {"force": True}, {"resume": False})]


@pytest.mark.parametrize("stage, target, flags", CASES, ids=[f"{s}-{t}-{'/'.join(f) or 'plain'}" for s, t, f in CASES])
def test_no_byte_outside_our_outputs_changes(world, stage, target, flags):
    """Every stage pointed at a user's data, an input, the run directory, its parent or a
    symlink to an input, with and without --force/--no-resume: refused (exit 2), nothing changed."""
    cfg_file = world / "cfg.yaml"
    raw = {"run": {"dir": str(world / "runs" / "today")},
           stage: {**SECTIONS[stage](world), OUT_KEY.get(stage, "out"): str(world / target)}}
    cfg_file.write_text(json.dumps(raw))
    before = snapshot(world)
    cfg = from_dict(raw, str(cfg_file))
    lines = []
    code = runs.execute(cfg, [stage], echo=lines.append, **flags)
    assert code == runs.EXIT_BAD_CONFIG, lines
    assert f"{stage}.{OUT_KEY.get(stage, 'out')}" in lines[-1] and str(cfg_file) in lines[-1]
    assert snapshot(world) == before


def test_output_of_another_kind_is_refused(world, tmp_path):
    """An activation store (ours, kind sae.store) named as an expand output is not replaced."""
    store = make_store(tmp_path / "s.zarr", n=8, chunk=4)
    outputs._write_marker(store, "sae.store", None)  # as the issue-12 store writer will
    before = snapshot(tmp_path)
    cfg = from_dict({"run": {"dir": str(tmp_path / "run")},
                     "expand": {"data": str(world / "data.csv"), "n": 5, "out": store}}, str(tmp_path / "c.yaml"))
    lines = []
    assert runs.execute(cfg, ["expand"], force=True, echo=lines.append) == runs.EXIT_BAD_CONFIG
    assert "'sae.store' output" in lines[-1]
    assert snapshot(tmp_path) == before


def test_two_outputs_of_one_run_may_not_overlap(world, tmp_path):
    cfg = from_dict({"run": {"dir": str(tmp_path / "run")},
                     "expand": {"data": str(world / "data.csv"), "n": 5, "out": "same.zarr"},
                     "reduce": {"data": str(world / "data.csv"), "n": 5, "out": "same.zarr"}}, "<c>")
    lines = []
    assert runs.execute(cfg, echo=lines.append) == runs.EXIT_BAD_CONFIG
    assert "overlaps another output" in lines[-1]
    assert not (tmp_path / "run").exists()  # refused before the run directory was created


def test_staged_hvrt_output_replaced_only_when_ours(world, tmp_path, client):
    """--force on our own finished output rewrites it; the same path holding a user's file is refused."""
    raw = {"run": {"dir": str(tmp_path / "run"), "performance_report": False},
           "expand": {"data": str(world / "data.csv"), "n": 40}}
    cfg = from_dict(raw, "<c>")
    assert runs.execute(cfg, client=client, echo=lambda m: None) == 0
    out = tmp_path / "run" / "expanded.zarr"
    assert ownership.owned_by(out, "hvrt.expand") and ownership.is_complete(out)
    first = read_output(str(out)).to_numpy()
    assert runs.execute(cfg, client=client, force=True, echo=lambda m: None) == 0
    np.testing.assert_array_equal(read_output(str(out)).to_numpy(), first)  # same seed, same rows
    assert not any(p.name.endswith("staging") for p in (tmp_path / "run").iterdir())


def test_recaptured_store_is_recomputed_not_already_complete(tmp_path, client):
    """The input store is re-captured after a finished run: the next run recomputes from it."""
    from hvrt_dask.sae.store import KIND as store_kind

    from hvrt_dask.sae.extract import extract_features

    from _faults_helpers import assert_same_arrays, read_arrays

    store = make_store(tmp_path / "acts.zarr", n=16, chunk=4, seed=0)
    sae = make_sae(tmp_path / "sae")
    params = {"top_k": 3, "prefix": 1, "suffix": 1}
    cfg = from_dict({"run": {"dir": str(tmp_path / "run"), "performance_report": False},
                     "extract": {"store": store, "sae": sae, **params}}, "<c>")
    assert runs.execute(cfg, client=client, echo=lambda m: None) == 0
    # re-capture: the store's writer replaces its own store (new data, new chunk checksums)
    ownership.clear(store, store_kind)
    make_store(tmp_path / "acts.zarr", n=16, chunk=4, seed=1)
    lines = []
    assert runs.execute(cfg, client=client, echo=lines.append) == 0
    assert not any("already" in m for m in lines), lines
    extract_features(store, sae, str(tmp_path / "ref"), progress=False, **params)
    assert_same_arrays(read_arrays(tmp_path / "ref"), read_arrays(tmp_path / "run" / "features"))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["stages"]["extract"]["overwrite"] is True and len(info["history"]) == 1


def test_unwritable_run_directory_is_a_message(tmp_path):
    (tmp_path / "a-file").write_text("x")
    cfg = from_dict({"run": {"dir": str(tmp_path / "a-file" / "run")},
                     "expand": {"data": "sklearn:load_wine", "n": 5}}, "<c>")
    lines = []
    assert runs.execute(cfg, echo=lines.append) == runs.EXIT_FAILED
    assert "cannot create the run directory" in lines[-1] and "a-file" in lines[-1]


def test_exports_are_owned_files_next_to_the_extraction(tmp_path, client):
    """extract → html (the site) → jsonl in one run: owned exports in the run directory."""
    store = make_store(tmp_path / "acts.zarr", n=8, chunk=4)
    sae = make_sae(tmp_path / "sae")
    cfg = from_dict({"run": {"dir": str(tmp_path / "run"), "performance_report": False},
                     "extract": {"store": store, "sae": sae, "top_k": 2, "prefix": 1, "suffix": 1},
                     "html": {"features": 3},
                     "jsonl": {"path": "features.jsonl"}}, "<c>")
    lines = []
    assert runs.execute(cfg, client=client, echo=lines.append) == 0, lines
    site, jl = tmp_path / "run" / "site", tmp_path / "run" / "features.jsonl"
    assert "<html" in (site / "index.html").read_text().lower()
    assert ownership.owned_by(site, site_build.KIND) and ownership.is_complete(site)
    records = [json.loads(line) for line in jl.read_text().splitlines()]
    assert records[0]["record"] == "header"  # the JSONL export starts with its header record
    assert sum(r["record"] == "feature" for r in records) == 24  # then one line per feature (d_sae)
    assert ownership.owned_by(jl, export.KIND_JSONL)
    assert f"[jsonl] output: {jl}" in lines
    assert runs.execute(cfg, client=client, force=True, echo=lambda m: None) == 0  # ours: replaced
    assert [json.loads(line) for line in jl.read_text().splitlines()] == records
