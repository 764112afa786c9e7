"""Stage inputs: an earlier expand/reduce output is read back through ``read_output``."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from hvrt_dask import HVRT, ownership
from hvrt_dask.hvrt import read_output
from pipelines.data import check_data, hvrt_output, load_data
from pipelines.schema import ConfigError


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame({"a": rng.standard_normal(300), "b": rng.gamma(2.0, size=300),
                         "k": rng.integers(0, 9, 300)})


def test_expand_output_is_loaded_with_names_and_dtypes(tmp_path):
    out = HVRT(random_state=1).fit(_frame()).expand(200, output=str(tmp_path / "synth.zarr"))
    assert hvrt_output(out)
    got = load_data(out)  # a lazy frame, decoded like read_output
    pd.testing.assert_frame_equal(got.compute().reset_index(drop=True), read_output(out).reset_index(drop=True))
    assert list(got.columns) == ["a", "b", "k"] and got.dtypes["k"] == np.int64


def test_incomplete_output_is_refused(tmp_path):
    out = HVRT(random_state=1).fit(_frame()).expand(50, output=str(tmp_path / "synth.zarr"))
    os.unlink(os.path.join(out, ownership.COMPLETE_FILE))  # as if its writer had been killed
    with pytest.raises(ValueError, match="incomplete"):
        check_data(out)
    with pytest.raises(ConfigError, match="incomplete"):
        load_data(out)
