"""``python -m pipelines.real_end_to_end``: a thin call of ``hvrt-dask run configs/real_end_to_end.yaml``.

Kept for the documented command line; the one runner is :func:`pipelines.runs.execute`.
``--max-samples/--steps/--d-sae/--n-workers`` become ``--set`` overrides; any other argument
is passed to ``hvrt-dask run`` as is.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "real_end_to_end.yaml")
SETS = {"max_samples": "capture.max_samples", "steps": "train_sae.steps", "d_sae": "train_sae.d_sae",
        "n_workers": "cluster.n_workers"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    for name in SETS:
        p.add_argument("--" + name.replace("_", "-"), type=int)
    args, rest = p.parse_known_args(argv)
    sets = [f"--set={key}={getattr(args, name)}" for name, key in SETS.items() if getattr(args, name)]
    from pipelines.cli import cli

    return cli.main(args=["run", args.config, *sets, *rest], prog_name="hvrt-dask", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
