"""The ownership rule: nothing without our marker of the same kind is ever changed."""

from __future__ import annotations

import os

import pytest

from hvrt_dask import ownership as own


def _snapshot(root):
    out = {}
    for dp, dn, fn in os.walk(root):
        for n in fn:
            p = os.path.join(dp, n)
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


def test_claim_then_complete_then_clear(tmp_path):
    out = tmp_path / "o"
    own.claim(out, "k", run_id="r1")
    assert own.owned_by(out, "k") and not own.owned_by(out, "other")
    assert not own.is_complete(out)
    with pytest.raises(own.IncompleteOutputError, match="incomplete"):
        own.require_complete(out)
    (out / "data").write_text("x")
    own.mark_complete(out, rows=3)
    assert own.read_complete(out)["rows"] == 3
    own.clear(out, "k")
    assert not out.exists()


def test_user_directory_and_file_are_never_touched(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "precious.txt").write_text("keep me")
    f = tmp_path / "file.csv"
    f.write_text("a,b\n")
    before = _snapshot(tmp_path)
    for target in (user, f):
        with pytest.raises(own.OwnershipError, match="not written by hvrt_dask"):
            own.check_output_path(target, "k")
        with pytest.raises(own.OwnershipError):
            own.clear(target, "k")
        with pytest.raises(own.OwnershipError):
            own.claim(target, "k")
    with pytest.raises(own.OwnershipError):
        with own.atomic_file(f, "k") as fh:
            fh.write("overwritten")
    assert _snapshot(tmp_path) == before


def test_other_kind_is_refused(tmp_path):
    out = tmp_path / "o"
    own.claim(out, "hvrt.expand")
    with pytest.raises(own.OwnershipError, match="'hvrt.expand' output, not 'sae.features'"):
        own.clear(out, "sae.features")
    assert out.exists()


def test_overlaps_resolved_through_symlinks(tmp_path):
    real = tmp_path / "store.zarr"
    real.mkdir()
    (real / "zarr.json").write_text("{}")
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    with pytest.raises(own.OwnershipError, match="overwrite the input"):
        own.check_output_path(link, "k", inputs=[real])
    with pytest.raises(own.OwnershipError, match="overwrite the input"):
        own.check_output_path(real, "k", inputs=[link])
    with pytest.raises(own.OwnershipError, match="inside the input"):
        own.check_output_path(link / "sub", "k", inputs=[real])
    with pytest.raises(own.OwnershipError, match="contain the run directory"):
        own.check_output_path(tmp_path / "runs", "k", run_dir=run_dir)
    with pytest.raises(own.OwnershipError, match="overlaps another output"):
        own.check_output_path(run_dir / "a", "k", others=[run_dir / "a" / "b"])
    # inside the run directory is where outputs belong
    assert own.check_output_path(run_dir / "out.zarr", "k", run_dir=run_dir).endswith("out.zarr")


def test_odd_marker_content_is_not_ownership(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    for content in ("{truncated", "[1, 2]", '"str"', '{"kind": 3}'):
        (out / own.OWNER_FILE).write_text(content)
        assert own.read_owner(out) is None
        with pytest.raises(own.OwnershipError):
            own.clear(out, "k")
    assert out.exists()


def test_atomic_file_failure_leaves_nothing(tmp_path):
    p = tmp_path / "x.jsonl"
    with own.atomic_file(p, "export") as f:
        f.write("first\n")
    with pytest.raises(RuntimeError):
        with own.atomic_file(p, "export") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "first\n"
    assert sorted(os.listdir(tmp_path)) == sorted(["x.jsonl", f".x.jsonl{own.OWNER_FILE}"])
    with own.atomic_file(p, "export") as f:  # ours: replaced
        f.write("second\n")
    assert p.read_text() == "second\n"


def test_atomic_file_gets_the_usual_mode(tmp_path):
    p = tmp_path / "x.html"
    with own.atomic_file(p, "export") as f:
        f.write("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~mask
