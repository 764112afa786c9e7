"""The README's main job (`make demo`) on the session cluster: outputs where it says, complete and correct."""

from __future__ import annotations

import json

import numpy as np
from sklearn.datasets import load_wine

from hvrt_dask import ownership
from hvrt_dask.hvrt import read_output
from pipelines.demo import run_demo


def test_demo_writes_complete_outputs_in_its_directory(tmp_path, client, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `make demo` passes a relative --out
    out = tmp_path / "demo_output"
    lines = []
    reports = run_demo("demo_output", dataset="load_wine", n_expand=300, ratio=0.2, echo=lines.append, client=client)
    real = load_wine(as_frame=True).data
    synth = read_output(out / "expanded.zarr")  # inside the run directory, not nested twice
    reduced = read_output(out / "reduced.zarr")
    assert ownership.is_complete(out / "expanded.zarr") and ownership.is_complete(out / "reduced.zarr")
    assert synth.shape == (300, real.shape[1]) and list(synth.columns) == list(real.columns)
    # reduce keeps real rows: each selected row equals the training row its source_row names
    assert len(reduced) == int(0.2 * len(real))
    np.testing.assert_array_equal(reduced.to_numpy(float), real.to_numpy(float)[reduced.index.to_numpy()])
    saved = json.loads((out / "fidelity.json").read_text())
    assert saved["expand"] == reports["expand"] and 0.0 <= saved["expand"]["discriminator_auc"] <= 1.0
    assert (out / "expand_fidelity.png").stat().st_size > 0
