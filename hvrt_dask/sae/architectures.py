"""SAE architectures as small registered classes, shared by extraction and training.

An architecture turns pre-activations into latents. Each is one class behind the
:class:`Architecture` protocol, registered in :data:`REGISTRY` by its SAELens name; the
loader (:mod:`hvrt_dask.sae.weights`), the encoders (:mod:`hvrt_dask.sae.encode`) and the
trainer (:mod:`hvrt_dask.sae.train`) look them up there instead of switching on names.

``topk`` and its tie rule
-------------------------
A token keeps its ``k`` largest pre-activations (after the optional decoder-norm rescale).
Ties at the k-th place are broken by the **lower feature index**, on every device: each
pre-activation is packed with its feature index into one int64 key that orders like
``(value descending, feature index ascending)`` (:func:`pack_keys`), and a feature is kept
when its key is at least the token's k-th largest key. Because the k-th key is one number
per token, it can be computed once over all feature blocks and then applied to each block
separately (:func:`kth_keys` merges blocks exactly).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

#: Largest feature index a packed key can hold.
MAX_FEATURES = 2**32 - 1


@runtime_checkable
class Architecture(Protocol):
    """How latents follow from pre-activations.

    Attributes
    ----------
    name : str
        The SAELens ``architecture`` value.
    extra_tensors : tuple of str
        Tensors of length ``d_sae`` the architecture needs besides the encoder/decoder.
    needs_token_threshold : bool
        Whether a feature's latent depends on the other features of its token (then a
        feature-blocked encode first needs each token's threshold over all blocks).
    """

    name: str
    extra_tensors: tuple[str, ...]
    needs_token_threshold: bool

    def activate(self, pre: torch.Tensor, enc, cols: torch.Tensor | None = None,
                 token_key: torch.Tensor | None = None) -> torch.Tensor:
        """Latents from ``pre [..., m]`` (modified in place where possible).

        ``enc`` holds the per-feature tensors of the columns' block; ``cols`` (block-local
        column ids, broadcast against ``pre``) selects some of them (None: all, in order);
        ``token_key [...]`` is the token threshold of :func:`kth_keys` (``topk`` only).
        """
        ...


REGISTRY: dict[str, Architecture] = {}


def register(cls):
    """Class decorator: add an architecture instance to :data:`REGISTRY`."""
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Architecture:
    """The registered architecture ``name`` (``KeyError`` names the supported ones)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown SAE architecture {name!r} (supported: {', '.join(REGISTRY)})") from None


def _masked(z: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``z * keep``, in place unless autograd needs ``z`` (training)."""
    return z * keep if z.requires_grad else z.mul_(keep)


def _select(t: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    return t if cols is None else t[cols]


@register
class Standard:
    """ReLU SAE: ``relu(pre)``."""

    name = "standard"
    extra_tensors: tuple[str, ...] = ()
    needs_token_threshold = False

    def activate(self, pre, enc, cols=None, token_key=None):
        return pre.relu_()


@register
class JumpReLU:
    """JumpReLU SAE: ``pre`` where ``pre > threshold`` (strict), else 0."""

    name = "jumprelu"
    extra_tensors = ("threshold",)
    needs_token_threshold = False

    def activate(self, pre, enc, cols=None, token_key=None):
        thr = _select(enc.threshold, cols)
        return _masked(pre.relu_(), pre > thr)  # relu first: pre > thr is unchanged where pre > 0


@register
class TopK:
    """TopK SAE: the ``k`` largest (optionally decoder-norm rescaled) pre-activations, ReLU'd;
    ties at the k-th place go to the lower feature index."""

    name = "topk"
    extra_tensors: tuple[str, ...] = ()
    needs_token_threshold = True

    def rescale(self, pre, enc, cols=None):
        """Pre-activations as ranked (times the decoder row norms when the SAE asks for it)."""
        return pre if enc.dec_norm is None else pre.mul_(_select(enc.dec_norm, cols))

    def keys(self, pre, enc, cols=None):
        """Packed keys of (rescaled) ``pre`` with the columns' global feature ids."""
        ids = torch.arange(pre.shape[-1], device=pre.device) if cols is None else cols
        return pack_keys(pre.detach(), ids + enc.offset)

    def activate(self, pre, enc, cols=None, token_key=None):
        pre = self.rescale(pre, enc, cols)
        key = self.keys(pre, enc, cols)
        if token_key is None:  # the whole SAE is here: the threshold over these columns
            if cols is not None or enc.width != enc.d_sae:
                raise ValueError("a topk activation of a feature subset needs the token thresholds (kth_keys)")
            token_key = kth_keys(key, enc.k)
        return _masked(pre.relu_(), key >= token_key.unsqueeze(-1))


class Whole:
    """The per-feature tensors of a whole SAE, for :meth:`Architecture.activate` outside an encoder
    (the trainer): ``offset`` 0, ``width == d_sae``."""

    def __init__(self, d_sae: int, k: int | None = None, threshold=None, dec_norm=None):
        self.offset, self.width, self.d_sae, self.k = 0, d_sae, d_sae, k
        self.threshold, self.dec_norm = threshold, dec_norm


def pack_keys(pre: torch.Tensor, feature_ids: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering like ``(value descending, feature index ascending)``.

    The float32 bit pattern, made monotonic for negative values, in the high word; the
    complement of the feature index in the low word (ids ``< 2**32``).
    """
    bits = pre.contiguous().view(torch.int32)
    mono = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    low = (MAX_FEATURES - feature_ids.to(torch.int64)).expand_as(mono)
    return mono.bitwise_left_shift(32).bitwise_or_(low)


def kth_keys(keys: torch.Tensor, k: int, running: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's k-th largest key, optionally merged with a previous block's ``running`` top
    keys (``[..., <=k]``). With ``running`` returns the new running top keys instead."""
    if running is not None:
        keys = torch.cat([running, keys], dim=-1)
        return keys.topk(min(k, keys.shape[-1]), dim=-1, sorted=False).values
    return keys.topk(k, dim=-1, sorted=False).values.amin(dim=-1)
