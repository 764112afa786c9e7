"""The extraction progress line (a widget in Jupyter): chunks, samples/s, tokens/s, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """Chunks and samples done, samples/s, tokens/s and ETA on one terminal line."""

    def __init__(self, n_chunks: int, n_samples: int, seq_len: int, enabled: bool):
        self.n_chunks, self.n_samples, self.seq_len, self.enabled = n_chunks, n_samples, seq_len, enabled
        self.chunks = self.samples = self.skipped = 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.widget = None
        if enabled and _in_notebook():
            try:
                import ipywidgets
                from IPython.display import display

                self.widget = ipywidgets.IntProgress(min=0, max=n_chunks, description="extract")
                self.label = ipywidgets.Label()
                display(ipywidgets.HBox([self.widget, self.label]))
            except ImportError:
                self.widget = None

    def update(self, n_samples: int, resumed: bool = False, force: bool = False) -> None:
        self.chunks += 1
        self.samples += n_samples
        if resumed:
            self.skipped += n_samples
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.5 and not force and self.chunks < self.n_chunks):
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = (self.samples - self.skipped) / el
        eta = (self.n_samples - self.samples) / rate if rate > 0 else float("nan")
        text = (
            f"chunks {self.chunks}/{self.n_chunks}  samples {self.samples}/{self.n_samples}  "
            f"{rate:,.1f} samples/s  {rate * self.seq_len:,.0f} tokens/s  ETA {eta:,.0f} s"
        )
        if self.widget is not None:
            self.widget.value = self.chunks
            self.label.value = text
        else:
            width = 30
            done = int(width * self.chunks / max(self.n_chunks, 1))
            print(f"\r[{'#' * done}{'.' * (width - done)}] {text}", end="", file=sys.stderr, flush=True)
            if self.chunks >= self.n_chunks:
                print(file=sys.stderr, flush=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip is not None and "IPKernelApp" in ip.config
    except Exception:
        return False


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip is not None and "IPKernelApp" in ip.config
    except Exception:
        return False


