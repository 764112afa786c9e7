"""A machine description for benchmark reports (uname, CPU model, cores, RAM)."""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:  # pragma: no cover
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def machine_description() -> str:
    """Markdown lines: ``uname -a``, CPU model, logical cores, RAM, Python and key versions."""
    import dask
    import numpy
    import sklearn

    u = platform.uname()
    return "\n".join([
        f"- uname: `{u.system} {u.node} {u.release} {u.version} {u.machine}`",
        f"- CPU: {_cpu_model()}",
        f"- logical cores: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()})",
        f"- RAM: {_ram_gib():.1f} GiB",
        f"- Python {platform.python_version()}, numpy {numpy.__version__}, dask {dask.__version__}, "
        f"scikit-learn {sklearn.__version__}",
    ])


if __name__ == "__main__":
    print(machine_description())
