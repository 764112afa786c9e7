"""Torch encoders for the SAELens architectures, batch-size resolution and OOM back-off.

All math is float32 (TF32 disabled on CUDA), whatever the activation store dtype, so that
results do not depend on the device beyond BLAS summation order.

Encode semantics (SAELens): optional per-token input normalisation, ``x - b_dec`` when
``apply_b_dec_to_input``, ``pre = x @ W_enc + b_enc``, then

- standard: ``relu(pre)``
- jumprelu: ``relu(pre)`` where ``pre > threshold`` (strict), else 0
- topk: (``pre * ||W_dec row||`` if ``rescale_acts_by_decoder_norm``) keep the ``k`` largest
  per token (ties at the k-th place: the lower feature index), ReLU them, zero the rest.

The activations are the registered classes of :mod:`hvrt_dask.sae.architectures`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hvrt_dask.sae import architectures
from hvrt_dask.sae.weights import SAE

log = logging.getLogger(__name__)

#: Largest CPU batch, in tokens (bigger batches do not speed up the matmul, only cost RAM).
CPU_MAX_TOKENS = 8192
#: Largest CPU batch, in latents (tokens x features): bounds a wide block's buffers (128 MiB of float32).
CPU_MAX_LATENTS = 1 << 25


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchEncoder:
    """An SAE's encoder (all features or one feature block) on one device.

    Parameters
    ----------
    sae : SAE
        The SAE's configuration (and, unless ``tensors`` is given, its arrays).
    device : str or torch.device, optional
    block : (int, int), optional
        Feature range ``[lo, hi)`` this encoder computes (default: all features).
    tensors : dict, optional
        The block's tensors (``W_enc [d_in, hi-lo]``, ``b_enc``, ``b_dec`` and the
        architecture's extra tensors; ``dec_norm`` for a rescaling topk SAE), e.g. read by
        :func:`hvrt_dask.sae.weights.read_block`; default: sliced from ``sae``'s arrays.

    The weights are copied once; the :class:`SAE` is untouched. The architecture's
    activation comes from :mod:`hvrt_dask.sae.architectures`.
    """

    def __init__(self, sae: SAE, device: str | torch.device | None = None, block: tuple[int, int] | None = None,
                 tensors: dict | None = None):
        self.sae = sae
        self.arch = architectures.get(sae.architecture)
        self.device = resolve_device(device)
        dev = self.device
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        lo, hi = (0, sae.d_sae) if block is None else (int(block[0]), int(block[1]))
        if tensors is None:
            tensors = block_tensors(sae, lo, hi)
        self.offset, self.width, self.k = lo, hi - lo, sae.k
        self.W_enc = _tensor(tensors["W_enc"], dev)
        self.b_enc = _tensor(tensors["b_enc"], dev)
        self.b_dec = _tensor(tensors["b_dec"], dev)
        self.threshold = _tensor(tensors["threshold"], dev) if "threshold" in tensors else None
        self.dec_norm = _tensor(tensors["dec_norm"], dev) if "dec_norm" in tensors else None
        self._W_enc_T = None
        # subtracting an all-zero b_dec changes nothing (x - 0 == x exactly): skip the pass
        self._subtract_b_dec = bool(sae.apply_b_dec_to_input and bool((self.b_dec != 0).any()))

    def full_encode_cheaper(self, m: int) -> bool:
        """Whether ``m`` features per sample are better served by encoding the whole block."""
        return 4 * m >= self.width

    @property
    def d_sae(self) -> int:
        """Features of the whole SAE (``width`` is this encoder's block)."""
        return self.sae.d_sae

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalisation and ``b_dec`` subtraction (per token; ``x`` is ``[..., d_in]`` float32)."""
        norm = self.sae.normalize_activations
        if norm == "constant_norm_rescale":
            n = x.norm(dim=-1, keepdim=True)
            # zero vectors (padding) stay zero instead of becoming NaN
            x = x * torch.where(n > 0, math.sqrt(self.sae.d_in) / n, torch.zeros_like(n))
        elif norm == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + 1e-5)
        if self._subtract_b_dec:
            x = x - self.b_dec
        return x

    def activate(self, pre: torch.Tensor, features: torch.Tensor | None = None,
                 token_key: torch.Tensor | None = None) -> torch.Tensor:
        """Nonlinearity on pre-activations (in place). ``features``: block-local columns.

        ``topk`` on a feature subset or a block needs ``token_key`` (:meth:`kth_keys`).
        """
        return self.arch.activate(pre, self, features, token_key)

    def pre(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-activations ``[N, width]`` of tokens ``x [N, d_in]``."""
        x = self.preprocess(x.to(self.device, torch.float32))
        return torch.addmm(self.b_enc, x, self.W_enc) if out is None else torch.addmm(self.b_enc, x, self.W_enc, out=out)

    def kth_keys(self, x: torch.Tensor, running: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``topk`` only: merge this block's keys of tokens ``x [N, d_in]`` into the running
        top-``k`` keys ``[N, <=k]`` (None for the first block); the token threshold is the
        final running keys' minimum (see :mod:`hvrt_dask.sae.architectures`)."""
        pre = self.arch.rescale(self.pre(x, out), self)
        return architectures.kth_keys(self.arch.keys(pre, self), self.k, running if running is not None
                                      else torch.empty((pre.shape[0], 0), dtype=torch.int64, device=pre.device))

    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None, token_key: torch.Tensor | None = None) -> torch.Tensor:
        """Latents ``[N, width]`` (float32) of tokens ``x [N, d_in]`` (any float dtype).

        ``out`` (float32 ``[N, width]``, contiguous): a buffer for the pre-activations, reused
        across batches by callers (a fresh multi-100-MB tensor per batch costs page faults).
        """
        return self.activate(self.pre(x, out), None, token_key)

    def encode_features(self, x: torch.Tensor, features: torch.Tensor, token_key: torch.Tensor | None = None) -> torch.Tensor:
        """Latents of token rows ``x [E, W, d_in]`` for one block-local feature per row ``features [E]``: ``[E, W]``."""
        x = x.to(self.device, torch.float32)
        e, w, d = x.shape
        if self.arch.needs_token_threshold and token_key is None:
            z = self.encode(x.reshape(e * w, d)).reshape(e, w, -1)
            return z.gather(2, features.view(e, 1, 1).expand(e, w, 1)).squeeze(2)
        xp = self.preprocess(x)
        wcols = self.W_enc.index_select(1, features).T  # [E, d_in]
        pre = torch.einsum("ewd,ed->ew", xp, wcols) + self.b_enc[features][:, None]
        return self.activate(pre, features[:, None], token_key)

    def encode_sample_features(
        self, x: torch.Tensor, features: torch.Tensor, scratch: dict | None = None, token_key: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latents of samples ``x [B, T, d_in]`` for a few block-local features per sample ``features [B, m]``.

        Returns ``[B, T, m]``: column ``j`` of sample ``b`` is feature ``features[b, j]``. One
        batched matmul against the gathered encoder columns (the context-window pass needs
        only the features whose top examples lie in each sample). ``token_key [B, T]``: the
        topk token thresholds (without them a topk SAE encodes the whole block and gathers).
        ``scratch`` (a dict) keeps the gathered columns' and the result's buffers for reuse.
        """
        x = x.to(self.device, torch.float32)
        b, t, d = x.shape
        m = features.shape[1]
        if self.full_encode_cheaper(m) or (self.arch.needs_token_threshold and token_key is None):
            tk = None if token_key is None else token_key.reshape(b * t)
            z = self.encode(x.reshape(b * t, d), token_key=tk).reshape(b, t, -1)
            return z.gather(2, features[:, None, :].expand(b, t, m))
        if self._W_enc_T is None:  # contiguous rows: a fast gather of encoder columns
            self._W_enc_T = self.W_enc.T.contiguous()
        xp = self.preprocess(x)
        w = scratch_buffer(scratch, "w", (b * m, d), self.device)
        torch.index_select(self._W_enc_T, 0, features.reshape(-1), out=w)  # [B * m, d_in]
        pre = scratch_buffer(scratch, "pre", (b, t, m), self.device)
        torch.bmm(xp, w.view(b, m, d).transpose(1, 2), out=pre)
        pre += self.b_enc[features][:, None, :]
        return self.activate(pre, features[:, None, :], token_key)


def _tensor(a, device) -> torch.Tensor:
    """A float32 tensor on ``device`` (numpy arrays are copied: SAE arrays are read-only)."""
    if isinstance(a, torch.Tensor):
        return a.to(device, torch.float32)
    return torch.tensor(np.asarray(a, np.float32), device=device)


def block_tensors(sae: SAE, lo: int, hi: int) -> dict:
    """The tensors of features ``[lo, hi)`` of a loaded SAE (see :class:`TorchEncoder`)."""
    out = {"W_enc": np.ascontiguousarray(sae.W_enc[:, lo:hi]), "b_enc": sae.b_enc[lo:hi], "b_dec": sae.b_dec}
    if sae.threshold is not None:
        out["threshold"] = sae.threshold[lo:hi]
    if sae.rescale_acts_by_decoder_norm:
        out["dec_norm"] = decoder_norms(sae.W_dec[lo:hi])
    return out


def decoder_norms(W_dec: np.ndarray) -> np.ndarray:
    """Row norms of decoder rows (float64 accumulation, float32 result)."""
    return np.linalg.norm(np.asarray(W_dec, np.float64), axis=1).astype(np.float32)


def scratch_buffer(scratch: dict | None, name: str, shape: tuple, device, dtype=torch.float32) -> torch.Tensor:
    """A contiguous ``shape`` tensor from ``scratch[name]`` (grown when too small); fresh without scratch."""
    n = math.prod(shape)
    if scratch is None:
        return torch.empty(shape, dtype=dtype, device=device)
    buf = scratch.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device.type != torch.device(device).type:
        buf = scratch[name] = torch.empty(n, dtype=dtype, device=device)
    return buf[:n].view(shape)


def encode_numpy(sae: SAE, x: np.ndarray, device: str | None = "cpu") -> np.ndarray:
    """Convenience: latents of ``x [..., d_in]`` as a float32 numpy array ``[..., d_sae]``."""
    enc = TorchEncoder(sae, device)
    x = np.asarray(x)
    flat = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32))
    with torch.no_grad():
        z = enc.encode(flat)
    return z.cpu().numpy().reshape(*x.shape[:-1], sae.d_sae)


def bytes_per_sample(seq_len: int, d_in: int, d_sae: int) -> int:
    """Working memory of one sample in a device batch (latents + temporaries + inputs)."""
    # latents f32, one bool mask/temporary of the same size, float64 stat blocks are bounded;
    # plus float32 input copy and normalised input.
    return seq_len * (d_sae * 4 * 3 + d_in * 4 * 3)


def auto_batch_size(seq_len: int, d_in: int, d_sae: int, device: torch.device, fraction: float = 0.5) -> int:
    """Samples per device step from free device memory (CUDA) or available RAM (CPU).

    CUDA: ``fraction`` of ``torch.cuda.mem_get_info`` free bytes. CPU: ``fraction/4`` of
    available RAM, capped at :data:`CPU_MAX_TOKENS` tokens (larger CPU batches only cost RAM).
    """
    per = bytes_per_sample(seq_len, d_in, d_sae)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        n = int(free * fraction // per)
    else:
        import psutil

        n = int(psutil.virtual_memory().available * fraction / 4 // per)
        n = min(n, max(1, CPU_MAX_TOKENS // seq_len), max(1, CPU_MAX_LATENTS // (seq_len * d_sae)))
    n = max(1, n)
    log.info("batch_size='auto' on %s: %d samples (%d tokens, %.1f MiB each)", device, n, n * seq_len, per / 2**20)
    return n


def resolve_batch_size(batch_size: int | str, seq_len: int, d_in: int, d_sae: int, device: torch.device) -> int:
    """Validate an integer batch size or compute ``"auto"``."""
    if batch_size == "auto":
        return auto_batch_size(seq_len, d_in, d_sae, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    return int(batch_size)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA (or CPU allocator) out-of-memory errors."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_batches(n: int, batch_size: int, step: Callable[[int, int], Any], on_oom: Callable[[], None] | None = None) -> int:
    """Call ``step(start, stop)`` over ``[0, n)`` in batches; halve the batch on OOM and retry.

    Returns the final batch size (recorded in extraction outputs). A batch of 1 that still
    runs out of memory re-raises. ``step`` must be idempotent per range (a failed batch is
    re-run as two halves).
    """
    start = 0
    while start < n:
        stop = min(n, start + batch_size)
        try:
            step(start, stop)
        except Exception as exc:
            if not is_oom(exc) or batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory: halving batch size to %d and retrying", batch_size)
            if on_oom is not None:
                on_oom()
            continue
        start = stop
    return batch_size
