"""The default strategy does not copy: DCR ratio ≥ 0.5 on every dataset here, AUC ≤ 0.75.

DCR and AUC are :mod:`hvrt_dask.metrics` (independent of the generator). The copying
strategies (``bootstrap_noise``, ``gaussian_kde`` at h = 0.1) are the contrast: they must
score below 0.5 on the same data, or the DCR check would prove nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hvrt_dask import metrics as M
from hvrt_dask.hvrt import HVRT


def _mixture():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 6)) * 3
    return centers[rng.integers(0, 4, 2000)] + rng.standard_normal((2000, 6))


def _diabetes():
    from sklearn.datasets import load_diabetes

    return load_diabetes(scaled=False, as_frame=True).frame  # integer age, binary sex


def _mixed():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1500, 3))
    return pd.DataFrame({
        "x": z[:, 0] + 0.5 * z[:, 1],
        "income": np.where(z[:, 1] > -0.3, np.exp(8 + 0.5 * z[:, 2]), 0.0),
        "count": np.round(np.exp(1.5 + 0.6 * z[:, 0])).astype(np.int64),
        "city": np.where(z[:, 2] > 0, "Oslo", "Rome"),
        "flag": z[:, 1] > 0.5,
    })


DATASETS = {"mixture": _mixture, "diabetes": _diabetes, "mixed": _mixed}


@pytest.mark.parametrize("name", list(DATASETS))
def test_default_does_not_copy(name):
    real = DATASETS[name]()
    m = HVRT(random_state=0).fit(real)
    synth = m.expand(5 * len(real))
    assert M.dcr(real, synth) >= 0.5
    assert M.discriminator_auc(real, synth) <= 0.75
    copies = m.expand(5 * len(real), generation_strategy="bootstrap_noise")
    assert M.dcr(real, copies) < 0.5  # the metric does see copying on this data
