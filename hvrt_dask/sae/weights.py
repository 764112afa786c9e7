"""SAELens directory format: load (validated, read-only), hash and save sparse autoencoders.

A directory holds ``cfg.json`` and ``sae_weights.safetensors`` with tensors

``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and,
for JumpReLU, ``threshold [d_sae]``.

Supported architectures: ``standard`` (ReLU), ``jumprelu`` and ``topk`` (with ``k`` and
optional ``rescale_acts_by_decoder_norm``). Both the v6 ``cfg.json`` form and the legacy
(pre-6.0) flat form (``activation_fn_str``/``activation_fn_kwargs``, boolean
``normalize_activations``, no ``architecture``) are understood. ``normalize_activations``
may be ``"none"``, ``"constant_norm_rescale"``, ``"layer_norm"`` or
``"expected_average_only_in"``; the last is *not* applied at inference (SAELens expects
the scale to be folded into the weights) and is recorded in :attr:`SAE.notes`.

The loaded SAE is never modified: the arrays are float32 copies marked read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvrt_dask import ownership
from hvrt_dask.sae import architectures

#: Registered architecture names (:mod:`hvrt_dask.sae.architectures`).
ARCHITECTURES = tuple(architectures.REGISTRY)

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
KIND = "sae.weights"  # ownership kind of directories written by save_sae
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")


class SAEError(ValueError):
    """The SAE directory is missing, malformed or unsupported (message names the file/key/tensor)."""


@dataclass(frozen=True)
class SAE:
    """A validated sparse autoencoder (float32, read-only arrays).

    Attributes
    ----------
    path : str
        The SAE directory.
    architecture : {"standard", "jumprelu", "topk"}
    d_in, d_sae : int
    apply_b_dec_to_input : bool
    normalize_activations : str
    k : int or None
        Active latents per token (``topk`` only).
    rescale_acts_by_decoder_norm : bool
        ``topk`` only: pre-activations are multiplied by the decoder row norms first.
    W_enc, b_enc, W_dec, b_dec, threshold : numpy.ndarray or None
        float32; ``threshold`` is None except for ``jumprelu``. All None when opened with
        ``load_sae(path, weights=False)`` (shapes and dtypes checked from the file header;
        workers then read feature blocks with :func:`read_block`).
    content_hash : str
        SHA-256 over ``cfg.json`` and the weights file (identifies the SAE in caches/outputs).
    cfg : dict
        The raw ``cfg.json``.
    notes : tuple of str
        Interpretation notes (e.g. legacy keys mapped, normalisation treated as folded).
    """

    path: str
    architecture: str
    d_in: int
    d_sae: int
    apply_b_dec_to_input: bool
    normalize_activations: str
    k: int | None
    rescale_acts_by_decoder_norm: bool
    W_enc: np.ndarray | None = field(repr=False)
    b_enc: np.ndarray | None = field(repr=False)
    W_dec: np.ndarray | None = field(repr=False)
    b_dec: np.ndarray | None = field(repr=False)
    threshold: np.ndarray | None = field(repr=False)
    content_hash: str
    cfg: dict = field(repr=False)
    notes: tuple[str, ...] = ()

    def describe(self) -> dict:
        """JSON-serialisable summary (recorded in extraction outputs)."""
        return {
            "path": self.path,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "k": self.k,
            "rescale_acts_by_decoder_norm": self.rescale_acts_by_decoder_norm,
            "content_hash": self.content_hash,
            "notes": list(self.notes),
        }


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 (hex) over ``cfg.json`` and ``sae_weights.safetensors`` of an SAE directory."""
    path = os.fspath(path)
    h = hashlib.sha256()
    for name in (CFG_FILE, WEIGHTS_FILE):
        fn = os.path.join(path, name)
        if not os.path.isfile(fn):
            raise SAEError(f"SAE directory {path!r} has no {name!r}")
        h.update(name.encode())
        with open(fn, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _is_legacy(cfg: dict) -> bool:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not version:
        return True
    try:
        return int(str(version).split(".")[0]) < 6
    except ValueError:
        return True


def _interpret_cfg(cfg: dict, fn: str) -> tuple[dict, list[str]]:
    """Normalise v6 and legacy cfg.json keys into one dict; returns (cfg, notes)."""
    notes: list[str] = []
    legacy = _is_legacy(cfg)
    arch = cfg.get("architecture")
    act_fn = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    act_kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch is None:
        if act_fn in (None, "relu"):
            arch = "standard"
        elif act_fn == "topk":
            arch = "topk"
        else:
            raise SAEError(f"{fn}: unknown 'activation_fn_str' {act_fn!r} (expected 'relu' or 'topk')")
        notes.append(f"legacy cfg: architecture inferred as {arch!r}")
    if arch not in ARCHITECTURES:
        raise SAEError(f"{fn}: unknown 'architecture' {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise SAEError(f"{fn}: missing key {key!r}")
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise SAEError(f"{fn}: {key!r} must be a positive integer, got {cfg[key]!r}")
    norm = cfg.get("normalize_activations", "none")
    if norm is None or norm is False:
        norm = "none"
    elif norm is True:
        norm = "expected_average_only_in"
        notes.append("legacy cfg: normalize_activations=True read as 'expected_average_only_in'")
    if norm not in NORMALIZATIONS:
        raise SAEError(f"{fn}: unknown 'normalize_activations' {norm!r} (supported: {', '.join(NORMALIZATIONS)})")
    if norm == "expected_average_only_in":
        notes.append(
            "normalize_activations='expected_average_only_in' is not applied at inference: "
            "the scaling factor is assumed folded into the weights (as SAELens does)"
        )
    apply_b_dec = cfg.get("apply_b_dec_to_input", True if legacy else True)
    if not isinstance(apply_b_dec, bool):
        raise SAEError(f"{fn}: 'apply_b_dec_to_input' must be a boolean, got {apply_b_dec!r}")
    k = None
    rescale = False
    if arch == "topk":
        k = cfg.get("k", act_kwargs.get("k"))
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= cfg["d_sae"]:
            raise SAEError(f"{fn}: topk SAE needs an integer 'k' in [1, d_sae={cfg['d_sae']}], got {k!r}")
        rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    out = {
        "architecture": arch,
        "d_in": int(cfg["d_in"]),
        "d_sae": int(cfg["d_sae"]),
        "normalize_activations": norm,
        "apply_b_dec_to_input": apply_b_dec,
        "k": k,
        "rescale_acts_by_decoder_norm": rescale,
    }
    if legacy:
        notes.append("legacy (pre-6.0) cfg.json")
    return out, notes


def _expected_shapes(arch: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name in architectures.get(arch).extra_tensors:
        shapes[name] = (d_sae,)
    return shapes


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _check_header(fn: str, arch: str, d_in: int, d_sae: int) -> None:
    """Names, shapes and floating dtypes of the tensors from the safetensors header only."""
    import struct

    try:
        with open(fn, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except Exception as exc:
        raise SAEError(f"{fn}: cannot read safetensors file ({exc})") from exc
    for name, shape in _expected_shapes(arch, d_in, d_sae).items():
        if name not in header:
            raise SAEError(f"{fn}: missing tensor {name!r} (needed by architecture {arch!r})")
        if tuple(header[name]["shape"]) != shape:
            raise SAEError(f"{fn}: tensor {name!r} has shape {tuple(header[name]['shape'])}, expected {shape}")
        if header[name]["dtype"] not in _FLOAT_DTYPES:
            raise SAEError(f"{fn}: tensor {name!r} has non-float dtype {header[name]['dtype']}")


def read_block(sae: SAE, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The tensors a :class:`~hvrt_dask.sae.encode.TorchEncoder` needs for features ``[lo, hi)``.

    Read from the file as slices (safetensors reads a slice without loading the tensor), as
    float32: ``W_enc[:, lo:hi]``, ``b_enc``, ``b_dec``, the architecture's extra tensors and,
    for a topk SAE that rescales by decoder norms, ``dec_norm`` (row norms of ``W_dec[lo:hi]``).

    Raises
    ------
    SAEError
        A slice holds NaN or inf (naming the tensor and the feature range).
    """
    from safetensors import safe_open

    from hvrt_dask.sae.encode import decoder_norms

    fn = os.path.join(sae.path, WEIGHTS_FILE)
    out: dict[str, np.ndarray] = {}
    with safe_open(fn, framework="pt") as f:  # torch reads bf16 too
        def get(name, index):
            return f.get_slice(name)[index].float().numpy()

        out["W_enc"] = np.ascontiguousarray(get("W_enc", (slice(None), slice(lo, hi))))
        out["b_enc"] = get("b_enc", slice(lo, hi))
        out["b_dec"] = get("b_dec", slice(None))
        for name in architectures.get(sae.architecture).extra_tensors:
            out[name] = get(name, slice(lo, hi))
        if sae.rescale_acts_by_decoder_norm:
            W_dec = get("W_dec", (slice(lo, hi), slice(None)))
            if not np.isfinite(W_dec).all():
                raise SAEError(f"{fn}: tensor 'W_dec' contains NaN or inf (features {lo}..{hi - 1})")
            out["dec_norm"] = decoder_norms(W_dec)
    for name, arr in out.items():
        if not np.isfinite(arr).all():
            raise SAEError(f"{fn}: tensor {name!r} contains NaN or inf (features {lo}..{hi - 1})")
    return out


def _check_tensors(tensors: dict[str, Any], arch: str, d_in: int, d_sae: int, where: str) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in _expected_shapes(arch, d_in, d_sae).items():
        if name not in tensors:
            raise SAEError(f"{where}: missing tensor {name!r} (needed by architecture {arch!r})")
        arr = tensors[name]
        if hasattr(arr, "detach"):  # torch tensor (possibly bf16): convert through float32
            arr = arr.detach().float().cpu().numpy()
        arr = np.asarray(arr)
        if tuple(arr.shape) != shape:
            raise SAEError(f"{where}: tensor {name!r} has shape {tuple(arr.shape)}, expected {shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise SAEError(f"{where}: tensor {name!r} has non-float dtype {arr.dtype}")
        arr = np.array(arr, dtype=np.float32, copy=True)
        if not np.isfinite(arr).all():
            raise SAEError(f"{where}: tensor {name!r} contains NaN or inf")
        arr.flags.writeable = False
        out[name] = arr
    return out


def load_sae(path: str | os.PathLike, weights: bool = True) -> SAE:
    """Load and validate an SAE directory in SAELens format.

    Parameters
    ----------
    path : str or path-like
        Directory with ``cfg.json`` and ``sae_weights.safetensors``.
    weights : bool
        Load the arrays (default). False: validate names, shapes and dtypes from the file
        header only and leave the arrays None (extraction: workers read feature blocks).

    Returns
    -------
    SAE

    Raises
    ------
    SAEError
        Missing file, unreadable JSON, missing/unknown key, unknown architecture, missing or
        misshapen tensor (the message names it).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise SAEError(f"SAE directory {path!r} does not exist")
    cfg_fn = os.path.join(path, CFG_FILE)
    w_fn = os.path.join(path, WEIGHTS_FILE)
    for fn in (cfg_fn, w_fn):
        if not os.path.isfile(fn):
            raise SAEError(f"SAE directory {path!r} has no {os.path.basename(fn)!r}")
    try:
        with open(cfg_fn) as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise SAEError(f"{cfg_fn}: invalid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise SAEError(f"{cfg_fn}: expected a JSON object")
    info, notes = _interpret_cfg(raw, cfg_fn)
    if not weights:
        _check_header(w_fn, info["architecture"], info["d_in"], info["d_sae"])
        return SAE(path=path, W_enc=None, b_enc=None, W_dec=None, b_dec=None, threshold=None,
                   content_hash=content_hash(path), cfg=raw, notes=tuple(notes), **info)
    try:
        from safetensors.torch import load_file  # torch path reads bf16 too

        tensors = load_file(w_fn, device="cpu")
    except Exception as exc:
        raise SAEError(f"{w_fn}: cannot read safetensors file ({exc})") from exc
    arrays = _check_tensors(tensors, info["architecture"], info["d_in"], info["d_sae"], w_fn)
    return SAE(
        path=path,
        W_enc=arrays["W_enc"],
        b_enc=arrays["b_enc"],
        W_dec=arrays["W_dec"],
        b_dec=arrays["b_dec"],
        threshold=arrays.get("threshold"),
        content_hash=content_hash(path),
        cfg=raw,
        notes=tuple(notes),
        **info,
    )


def save_sae(path: str | os.PathLike, tensors: dict[str, Any], cfg: dict, overwrite: bool = False, *,
             inputs: tuple = (), complete: bool = True) -> str:
    """Write an SAE directory in SAELens (v6) format; returns its content hash.

    Parameters
    ----------
    path : str or path-like
        Target directory (created). It must be absent, empty, or an SAE directory written
        by this function (hvrt_dask's ownership marker of kind ``"sae.weights"``).
    tensors : dict
        ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec``, ``b_dec`` (+ ``threshold`` for jumprelu);
        numpy arrays or torch tensors, stored as float32.
    cfg : dict
        At least ``d_in``, ``d_sae``; ``architecture`` (default ``"standard"``),
        ``apply_b_dec_to_input`` (default True), ``normalize_activations`` (default
        ``"none"``), ``k`` for topk, optional ``metadata`` (model/hook names, ...).
    overwrite : bool
        Replace an SAE directory this function wrote before (never anything else).
    inputs : paths
        Inputs of the computation (e.g. the activation store): ``path`` may not equal,
        contain or lie inside one.
    complete : bool
        Write the completion marker (False: the caller adds files, then calls
        :func:`hvrt_dask.ownership.mark_complete`).

    Raises
    ------
    FileExistsError
        ``path`` already holds an SAE written here and ``overwrite`` is False.
    hvrt_dask.ownership.OwnershipError
        ``path`` holds data hvrt_dask did not write (nothing is deleted), or overlaps an input.
    """
    from safetensors.numpy import save_file

    path = os.fspath(path)
    full = {"architecture": "standard", "apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32"}
    full.update(cfg)
    meta = dict(full.get("metadata") or {})
    meta.setdefault("sae_lens_version", "6.0.0")
    meta.setdefault("written_by", "hvrt_dask.sae.weights.save_sae")
    full["metadata"] = meta
    info, _ = _interpret_cfg(full, f"cfg for {path}")
    arrays = _check_tensors(tensors, info["architecture"], info["d_in"], info["d_sae"], f"tensors for {path}")
    # validated; now the path: ours or fresh, never an input
    ownership.check_output_path(path, KIND, inputs=inputs)
    if ownership.owned_by(path, KIND):
        if not overwrite:
            raise FileExistsError(f"SAE directory {path!r} already holds an SAE written by hvrt_dask "
                                  "(pass overwrite=True to replace it, or choose another path)")
        ownership.clear(path, KIND)
    ownership.claim(path, KIND)
    cfg_fn, w_fn = os.path.join(path, CFG_FILE), os.path.join(path, WEIGHTS_FILE)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, w_fn)
    with open(cfg_fn, "w") as f:
        json.dump(full, f, indent=2, sort_keys=True)
    digest = content_hash(path)
    if complete:
        ownership.mark_complete(path, content_hash=digest)
    return digest
