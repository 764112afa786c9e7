"""The notebooks run top to bottom, headless, against a LocalCluster with small data."""

from __future__ import annotations

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python3_is_this_venv():
    """The `python3` kernel must start this interpreter (ipykernel's native spec does that)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    exe = spec.argv[0]
    return exe in ("python", "python3", "{python}") or os.path.realpath(exe) == os.path.realpath(sys.executable) \
        or os.path.dirname(exe) == os.path.dirname(sys.executable)


def run_notebook(name, tmp_path):
    path = os.path.join(ROOT, "notebooks", name)
    nb = nbformat.read(path, as_version=4)
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env_path  # kernel "python" = this venv
    try:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ["PATH"] = env_path
    return nb


def outputs_text(nb):
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.append(data.get("text/plain", ""))
            parts.append(data.get("text/html", ""))
            if "image/png" in data:
                parts.append("<PNG>")
    return "\n".join(parts)


def test_kernel_is_this_environment():
    assert _python3_is_this_venv()


def test_hvrt_walkthrough(tmp_path):
    nb = run_notebook("hvrt_walkthrough.ipynb", tmp_path)
    text = outputs_text(nb)
    assert "Dask dashboard: http://127.0.0.1:" in text
    assert "marginal_fidelity" in text and "HVRT reduce" in text and "uniform subset" in text
    assert text.count("<PNG>") >= 3  # marginals, correlations, reduce scatter


def test_extraction_walkthrough(tmp_path):
    nb = run_notebook("extraction_walkthrough.ipynb", tmp_path)
    text = outputs_text(nb)
    assert "Dask dashboard: http://127.0.0.1:" in text
    assert "background:rgba(255,120,0," in text  # shaded tokens rendered inline
    assert "Feature " in text and "live features" in text
    assert "feature browser:" in text and "(32 features)" in text  # the site of every feature
    assert "cleaned up: True" in text  # the notebook removes what it wrote
