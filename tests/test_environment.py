"""environment.yml (conda) and pyproject.toml pin the same packages at the same versions."""

from __future__ import annotations

import os
import re
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)\s*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(items, where):
    pins = {}
    for item in items:
        m = PIN.match(item)
        assert m, f"{where}: {item!r} is not pinned with =="
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def pyproject_pins():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    pins = _pins(proj["dependencies"], "pyproject dependencies")
    extras = {}
    for extra, items in proj.get("optional-dependencies", {}).items():
        extras[extra] = _pins(items, f"pyproject [{extra}]")
    return pins, extras


def environment_pins():
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    pip = [d for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: section"
    items = [i for i in pip[0]["pip"] if not i.startswith("-e")]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    return _pins(items, "environment.yml pip"), conda


def test_same_packages_same_versions():
    core, extras = pyproject_pins()
    env, _ = environment_pins()
    # The conda environment installs the core and the extras the Makefile installs (text, test,
    # slurm: the SLURM job-script tests need dask-jobqueue, no SLURM); gpu/mutation stay optional.
    expected = dict(core)
    for extra in ("text", "test", "slurm"):
        expected.update(extras.get(extra, {}))
    assert env == expected, {
        "only in environment.yml": sorted(set(env) - set(expected)),
        "only in pyproject.toml": sorted(set(expected) - set(env)),
        "different versions": {k: (env[k], expected[k]) for k in set(env) & set(expected) if env[k] != expected[k]},
    }


def test_optional_extras_pinned_and_not_conflicting():
    core, extras = pyproject_pins()
    env, _ = environment_pins()
    for extra, pins in extras.items():
        for name, version in pins.items():
            if name in core:
                assert core[name] == version, f"[{extra}] {name}=={version} vs core {core[name]}"
            if name in env:
                assert env[name] == version


def test_python_version_agrees():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["project"]["requires-python"]
    _, conda = environment_pins()
    py = [d for d in conda if d.startswith("python")]
    assert py, "environment.yml pins no python"
    version = py[0].split("=")[-1]
    lo = re.match(r">=\s*(\d+)\.(\d+)", requires)
    assert lo and tuple(map(int, version.split(".")[:2])) >= (int(lo.group(1)), int(lo.group(2)))
