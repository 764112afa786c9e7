"""The extraction's progress: chunks, samples/s, tokens/s and ETA on :class:`hvrt_dask.progress.Bar`."""

from __future__ import annotations

import time

from hvrt_dask.progress import Bar


class Progress:
    """Chunks done (resumed chunks count as done but not toward the rate)."""

    def __init__(self, n_chunks: int, n_samples: int, seq_len: int, enabled: bool):
        self.n_samples, self.seq_len = n_samples, seq_len
        self.samples = self.skipped = 0
        self.t0 = time.perf_counter()
        self.bar = Bar(n_chunks, "extract", unit="chunk", enabled=enabled)

    def update(self, n_samples: int, resumed: bool = False, force: bool = False) -> None:
        self.samples += n_samples
        if resumed:
            self.skipped += n_samples
        rate = (self.samples - self.skipped) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.n_samples - self.samples) / rate if rate > 0 else float("nan")
        self.bar.update(1, f"samples {self.samples}/{self.n_samples}, {rate:,.1f} samples/s, "
                           f"{rate * self.seq_len:,.0f} tokens/s, ETA {eta:,.0f} s")
        if self.bar.n >= self.bar.total:
            self.bar.close()
