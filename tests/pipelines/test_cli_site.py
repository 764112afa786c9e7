"""``hvrt-dask site``: build, refuse a foreign directory, and --serve printing its loopback address."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

from click.testing import CliRunner

from pipelines.cli import cli

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sae"))
from _extract_data import make_sae, make_store  # noqa: E402
from hvrt_dask import ownership  # noqa: E402
from hvrt_dask.sae.extract import extract_features  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_site_verb_builds_serves_and_refuses(tmp_path):
    make_store(tmp_path / "store", n=20, seq=8, d_in=12, chunk=10, vocab=20)
    make_sae(tmp_path / "sae", d_in=12, d_sae=7)
    out = extract_features(tmp_path / "store", tmp_path / "sae", tmp_path / "out", top_k=3, prefix=1, suffix=1, progress=False).path
    site = tmp_path / "site"
    res = CliRunner().invoke(cli, ["site", out, str(site)])
    assert res.exit_code == 0, res.output
    assert "site: 7 features" in res.output and str(site / "index.html") in res.output
    assert ownership.is_complete(site)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["site", out, str(foreign)])
    assert res.exit_code == 2 and "not written by hvrt_dask" in res.output
    assert os.listdir(foreign) == ["x.txt"]
    # --serve prints the address on 127.0.0.1 and serves the site there
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-m", "pipelines", "site", out, str(site), "--serve", "--no-build", "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        line = p.stdout.readline()
        assert "serving" in line and "http://127.0.0.1:" in line, line
        address = line.split(" at ")[1].split(" ")[0]
        with urllib.request.urlopen(address, timeout=30) as r:
            assert r.status == 200 and b"static/site.js" in r.read()
    finally:
        p.kill()
        p.wait()
