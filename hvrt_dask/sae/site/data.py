"""The site's data files: ``HVRT.receive(key, <JSON>)`` scripts, values rounded for display."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def rounded(a: np.ndarray, digits: int = 5) -> list:
    """Floats rounded to ``digits`` significant digits (short JSON); NaN/inf → None."""
    x = np.asarray(a, np.float64)
    finite = np.isfinite(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(finite & (x != 0), np.floor(np.log10(np.abs(np.where(finite, x, 1)))), 0)
        scale = 10.0 ** (digits - 1 - mag)
        r = np.where(finite, np.round(x * scale) / scale, np.nan)
    out = r.tolist()
    if not finite.all():
        _none_nan(out)
    return out


def _none_nan(lst: list) -> None:
    for i, v in enumerate(lst):
        if isinstance(v, list):
            _none_nan(v)
        elif v != v or v in (math.inf, -math.inf):
            lst[i] = None


def dumps(obj: Any) -> str:
    # ASCII-only JSON (U+2028 and every non-ASCII character escaped): safe as a script literal
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class Writer:
    """Writes ``data/<key>.js`` files and counts them."""

    def __init__(self, root: str):
        self.root = root
        self.files = 0
        self.bytes = 0
        self._dirs: set[str] = set()

    def put(self, key: str, obj: Any) -> None:
        self.put_json(key, dumps(obj))

    def put_json(self, key: str, json_text: str) -> None:
        """Write already-encoded (ASCII) JSON."""
        fn = os.path.join(self.root, "data", *key.split("/")) + ".js"
        d = os.path.dirname(fn)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)
        text = f"HVRT.receive({dumps(key)},{json_text});\n"
        with open(fn, "w", encoding="ascii") as f:
            f.write(text)
        self.files += 1
        self.bytes += len(text)
