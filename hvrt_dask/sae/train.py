"""A small sparse-autoencoder trainer over the activation store.

Enough to give the demo and the tests a real SAE for a captured layer: ReLU ("standard") or
TopK SAE, Adam, a fixed number of steps, trained on valid-token activations streamed from the
store with a seeded shuffle, written in the SAELens directory format plus a ``training.json``
run record (fraction of variance explained and L0 on held-out tokens).

Training happens on inputs scaled to mean norm ``sqrt(d_in)`` (so one ``l1_coefficient`` works
across layers and models); the scale is folded back into the saved weights, which therefore
act on raw activations (``normalize_activations: "none"``):
``W_enc' = s W_enc``, ``b_dec' = b_dec / s``, ``W_dec' = W_dec / s`` and ``b_enc' = b_enc``
give the same latents on raw ``x`` as the trained SAE on ``s x``.

Standard loss: ``sum_d (x_hat - x)^2 + l1 * sum_j f_j ||W_dec_j||`` averaged over tokens (the
L1 penalty is weighted by decoder norms, so shrinking the decoder cannot cheat it; the L1
coefficient ramps up linearly over ``l1_warmup_steps``). TopK: reconstruction only, decoder
rows renormalised to unit norm after every step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvrt_dask import config, ownership
from hvrt_dask._seeding import generator
from hvrt_dask.progress import Bar
from hvrt_dask.sae import architectures
from hvrt_dask.sae.store import ActivationStore, open_store
from hvrt_dask.sae.weights import KIND as SAE_KIND
from hvrt_dask.sae.weights import save_sae

#: Architectures this trainer fits (a subset of :data:`hvrt_dask.sae.architectures.REGISTRY`).
ARCHITECTURES = ("standard", "topk")


# ---------------------------------------------------------------------------------------------
# data: held-out split and a seeded, chunk-streaming shuffle buffer


@dataclass
class _Split:
    holdout: np.ndarray  # bool [n_samples]: sample is held out


def _split(st: ActivationStore, seed: int, holdout_fraction: float) -> _Split:
    n = st.n_samples
    n_hold = int(round(holdout_fraction * n)) if n > 1 else 0
    n_hold = min(max(n_hold, 1 if n > 1 and holdout_fraction > 0 else 0), n - 1)
    hold = np.zeros(n, dtype=bool)
    hold[generator(seed, "train", "holdout").permutation(n)[:n_hold]] = True
    return _Split(hold)


def _chunk_tokens(st: ActivationStore, i: int, keep: np.ndarray) -> np.ndarray:
    """Valid-token activations (float32 [m, d_in]) of chunk ``i`` for the samples in ``keep``."""
    s, e = st.chunk_bounds(i)
    m = np.asarray(st.mask[s:e], dtype=bool) & keep[s:e, None]
    if not m.any():
        return np.empty((0, st.d_in), np.float32)
    return np.asarray(st.activations[s:e])[m].astype(np.float32)


def _holdout_tokens(st: ActivationStore, split: _Split, max_tokens: int, seed: int) -> np.ndarray:
    parts = [_chunk_tokens(st, i, split.holdout) for i in range(st.n_chunks) if split.holdout[slice(*st.chunk_bounds(i))].any()]
    x = np.concatenate(parts) if parts else np.empty((0, st.d_in), np.float32)
    if len(x) > max_tokens:
        x = x[np.sort(generator(seed, "train", "holdout-tokens").choice(len(x), max_tokens, replace=False))]
    return x


class TokenStream:
    """Endless seeded stream of training batches (float32 ``[batch_tokens, d_in]``).

    Chunks are read in a seeded random order per epoch into a shuffle buffer; each refill of
    the buffer is shuffled with its own keyed generator, and half of it is emitted before the
    next refill, so tokens from different chunks mix.
    """

    def __init__(self, st: ActivationStore, keep: np.ndarray, batch_tokens: int, buffer_tokens: int, seed: int):
        self.st, self.keep, self.batch, self.buffer_tokens, self.seed = st, keep, batch_tokens, buffer_tokens, seed
        self.n_tokens = int(sum((np.asarray(st.mask[slice(*st.chunk_bounds(i))]) & keep[slice(*st.chunk_bounds(i)), None]).sum()
                                for i in range(st.n_chunks)))
        if self.n_tokens == 0:
            raise ValueError(f"activation store {st.path!r} has no valid training tokens")
        self.batch = min(self.batch, self.n_tokens)
        self.buffer_tokens = max(self.buffer_tokens, 2 * self.batch)

    def __iter__(self):
        buf = np.empty((0, self.st.d_in), np.float32)
        epoch = refill = 0
        while True:
            order = generator(self.seed, "train", "epoch", epoch).permutation(self.st.n_chunks)
            for i in order:
                x = _chunk_tokens(self.st, int(i), self.keep)
                buf = np.concatenate([buf, x]) if len(buf) else x
                if len(buf) < self.buffer_tokens and len(buf) < self.n_tokens:
                    continue
                buf = buf[generator(self.seed, "train", "shuffle", refill).permutation(len(buf))]
                refill += 1
                keep_back = min(len(buf) // 2, self.buffer_tokens // 2)
                while len(buf) - self.batch >= keep_back:
                    yield buf[: self.batch]
                    buf = buf[self.batch :]
            epoch += 1


# ---------------------------------------------------------------------------------------------
# the model


def _encode(x, W_enc, b_enc, b_dec, architecture: str, k: int | None):
    """Latents with the registered architecture's activation (the one extraction uses)."""
    pre = (x - b_dec) @ W_enc + b_enc
    return architectures.get(architecture).activate(pre, architectures.Whole(W_enc.shape[1], k))


def evaluate(x: np.ndarray, tensors: dict[str, np.ndarray], architecture: str = "standard", k: int | None = None,
             batch: int = 8192) -> dict:
    """Fraction of variance explained, L0 and dead-feature share of an SAE on raw tokens ``x``."""
    import torch

    t = {n: torch.from_numpy(np.asarray(v, np.float32)) for n, v in tensors.items()}
    mean = x.astype(np.float64).mean(0)
    sse = sst = 0.0
    l0 = 0
    fired = torch.zeros(t["W_enc"].shape[1], dtype=torch.bool)
    with torch.no_grad():
        for s in range(0, len(x), batch):
            xb = torch.from_numpy(np.asarray(x[s : s + batch], np.float32))
            f = _encode(xb, t["W_enc"], t["b_enc"], t["b_dec"], architecture, k)
            xh = f @ t["W_dec"] + t["b_dec"]
            sse += float(((xh - xb).double() ** 2).sum())
            sst += float(((xb.double() - torch.from_numpy(mean)) ** 2).sum())
            l0 += int((f > 0).sum())
            fired |= (f > 0).any(0)
    return {
        "fve": 1.0 - sse / sst if sst > 0 else float("nan"),
        "l0": l0 / max(len(x), 1),
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": int(len(x)),
    }


def _default(value, key):
    return config.get(f"train.{key}") if value is None else value


def train_sae(
    store: str | os.PathLike | ActivationStore,
    out_dir: str | os.PathLike,
    *,
    d_sae: int | None = None,
    architecture: str | None = None,
    k: int | None = None,
    l1_coefficient: float | None = None,
    lr: float | None = None,
    steps: int | None = None,
    batch_tokens: int | None = None,
    seed: int | None = None,
    l1_warmup_steps: int | None = None,
    holdout_fraction: float | None = None,
    max_holdout_tokens: int | None = None,
    buffer_tokens: int | None = None,
    threads: int | None = None,
    log_every: int = 25,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train an SAE on the valid tokens of ``store`` and write it in SAELens format.

    Parameters
    ----------
    store : str, path or ActivationStore
        A complete activation store.
    out_dir : str or path
        SAE directory to write (``cfg.json``, ``sae_weights.safetensors``, ``training.json``).
    d_sae : int, default from ``train.d-sae``
    architecture : {"standard", "topk"}, default from ``train.architecture``
    k : int, optional
        Active latents per token (``topk`` only; required there).
    l1_coefficient : float, default from ``train.l1-coefficient``
        Sparsity penalty (``standard``), relative to inputs scaled to norm ``sqrt(d_in)``.
    lr : float, default from ``train.lr``
        Adam learning rate.
    steps : int, default from ``train.steps``
    batch_tokens : int, default from ``train.batch-tokens``
    seed : int, default from ``seed-default``
        Keys every random draw (hold-out split, chunk order, shuffles, initialisation).
    l1_warmup_steps : int, optional
        Steps over which the L1 coefficient ramps up (default 10 % of ``steps``).
    holdout_fraction : float, default from ``train.holdout-fraction``
        Share of samples held out for the FVE/L0 evaluation.
    max_holdout_tokens : int, default from ``train.max-holdout-tokens``
    buffer_tokens : int, default from ``train.buffer-tokens``
        Shuffle-buffer size in tokens.
    threads : int, default from ``train.threads``
        ``torch.set_num_threads`` during training.
    overwrite : bool
        Replace an existing SAE in ``out_dir``.

    Returns
    -------
    dict
        The run record written to ``training.json`` (``fve``, ``l0``, ``dead_fraction``, losses,
        timing, parameters).
    """
    import torch

    d_sae = int(_default(d_sae, "d-sae"))
    architecture = _default(architecture, "architecture")
    l1_coefficient = float(_default(l1_coefficient, "l1-coefficient"))
    lr = float(_default(lr, "lr"))
    steps = int(_default(steps, "steps"))
    batch_tokens = int(_default(batch_tokens, "batch-tokens"))
    seed = int(config.get("seed-default") if seed is None else seed)
    holdout_fraction = float(_default(holdout_fraction, "holdout-fraction"))
    max_holdout_tokens = int(_default(max_holdout_tokens, "max-holdout-tokens"))
    buffer_tokens = int(_default(buffer_tokens, "buffer-tokens"))
    threads = int(_default(threads, "threads"))
    l1_warmup_steps = max(1, steps // 10) if l1_warmup_steps is None else int(l1_warmup_steps)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if d_sae < 1 or steps < 1 or batch_tokens < 1:
        raise ValueError(f"d_sae, steps and batch_tokens must be positive, got {d_sae}, {steps}, {batch_tokens}")
    if architecture == "topk":
        if k is None or not 1 <= int(k) <= d_sae:
            raise ValueError(f"architecture 'topk' needs k in 1..d_sae={d_sae}, got {k!r}")
        k = int(k)
    elif k is not None:
        raise ValueError("k is only used by architecture 'topk'")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if lr <= 0 or l1_coefficient < 0:
        raise ValueError(f"lr must be positive and l1_coefficient non-negative, got {lr}, {l1_coefficient}")
    st = store if isinstance(store, ActivationStore) else open_store(store)
    out_dir = os.fspath(out_dir)
    # refused before training: a path holding data hvrt_dask did not write, or an input
    ownership.check_output_path(out_dir, SAE_KIND, inputs=(st.path,))
    if os.path.exists(os.path.join(out_dir, "cfg.json")) and not overwrite:
        raise FileExistsError(f"SAE directory {out_dir!r} already holds an SAE (pass overwrite=True)")

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        t_start = time.perf_counter()
        split = _split(st, seed, holdout_fraction)
        x_hold = _holdout_tokens(st, split, max_holdout_tokens, seed)
        stream = TokenStream(st, ~split.holdout, batch_tokens, buffer_tokens, seed)
        it = iter(stream)
        first = next(it)
        # scale to mean norm sqrt(d_in) so the L1 coefficient does not depend on the model/layer
        scale = float(np.sqrt(st.d_in) / max(np.linalg.norm(first, axis=1).mean(), 1e-12))
        d_in = st.d_in
        g = torch.Generator().manual_seed(int(generator(seed, "train", "init").integers(2**62)))
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if architecture == "standard":
            W_dec *= 0.1
        W_enc = W_dec.T.clone()
        b_enc = torch.zeros(d_sae)
        b_dec = torch.from_numpy((first * scale).mean(0).astype(np.float32))
        params = [p.requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
        log = []
        batch = first
        bar = Bar(steps, "train_sae", unit="step", enabled=progress)
        for step in range(steps):
            if step:
                batch = next(it)
            x = torch.from_numpy(batch) * scale
            f = _encode(x, W_enc, b_enc, b_dec, architecture, k)
            x_hat = f @ W_dec + b_dec
            mse = ((x_hat - x) ** 2).sum(-1).mean()
            if architecture == "standard":
                l1 = (f * W_dec.norm(dim=1)).sum(-1).mean()
                loss = mse + l1_coefficient * min(1.0, (step + 1) / l1_warmup_steps) * l1
            else:
                l1 = torch.zeros(())
                loss = mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if architecture == "topk":
                with torch.no_grad():
                    W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            if step % log_every == 0 or step == steps - 1:
                with torch.no_grad():
                    fve = 1 - float(((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
                rec = {"step": step, "loss": float(loss.detach()), "mse": float(mse.detach()), "l1": float(l1.detach()),
                       "l0": float((f.detach() > 0).float().sum(-1).mean()), "fve_batch": fve}
                log.append(rec)
                bar.update(step + 1 - bar.n, f"loss {rec['loss']:.4g} mse {rec['mse']:.4g} "
                                             f"L0 {rec['l0']:.1f} FVE(batch) {fve:.3f}")
        bar.close()
        train_s = time.perf_counter() - t_start
        with torch.no_grad():
            tensors = {  # fold the input scale into the weights (see module docstring)
                "W_enc": (W_enc * scale).numpy().copy(),
                "b_enc": b_enc.numpy().copy(),
                "W_dec": (W_dec / scale).numpy().copy(),
                "b_dec": (b_dec / scale).numpy().copy(),
            }
    finally:
        torch.set_num_threads(old_threads)
    held = evaluate(x_hold, tensors, architecture, k) if len(x_hold) else {"fve": None, "l0": None, "dead_fraction": None, "n_tokens": 0}
    attrs = st.attrs
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": int(st.d_in),
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": attrs.get("model"),
            "hook_name": f"{attrs.get('hook')}.{attrs.get('layer')}",
            "hook_layer": attrs.get("layer"),
            "context_size": int(st.seq_len),
            "prepend_bos": False,
            "dataset_path": attrs.get("source"),
            "trained_by": "hvrt_dask.sae.train.train_sae",
        },
    }
    if architecture == "topk":
        cfg["k"] = k
        cfg["rescale_acts_by_decoder_norm"] = False
    # the SAE files, then training.json, then the completion marker (last)
    content = save_sae(out_dir, tensors, cfg, overwrite=overwrite, inputs=(st.path,), complete=False)
    record = {
        "store": st.path,
        "architecture": architecture,
        "d_in": int(st.d_in),
        "d_sae": d_sae,
        "k": k,
        "l1_coefficient": l1_coefficient,
        "lr": lr,
        "steps": steps,
        "batch_tokens": stream.batch,
        "seed": seed,
        "l1_warmup_steps": l1_warmup_steps,
        "input_scale": scale,
        "train_tokens_available": stream.n_tokens,
        "tokens_seen": steps * stream.batch,
        "train_seconds": train_s,
        "threads": threads,
        "holdout": held,
        "fve": held["fve"],
        "l0": held["l0"],
        "dead_fraction": held["dead_fraction"],
        "log": log,
        "content_hash": content or None,
    }
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump(record, f, indent=2)
    ownership.mark_complete(out_dir, content_hash=content)
    return record
