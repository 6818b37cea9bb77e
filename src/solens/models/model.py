"""``Model``: a CLIP-like model as solens sees it (vision tower + text encoder + preprocessing)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from solens.errors import UnsupportedModelError
from solens.models.openclip_types import as_clip, as_tower
from solens.models.trace import Trace, run_trace
from solens.models.weights import ViTWeights, vit_weights

SUPPORTED = (
    "open_clip VisionTransformer towers with CLS-token pooling ('tok'), standard "
    "ResidualAttentionBlocks (nn.MultiheadAttention), optional layer scale and "
    "final_ln_after_pool"
)

RANDOM = "random"
"""``ModelInfo.pretrained`` and ``info.extra["weights"]`` of randomly initialised weights
(``load_model(name, "random")``, ``Model.from_open_clip(..., pretrained="random")``)."""

RANDOM_WEIGHTS = "RANDOM WEIGHTS (randomly initialised, not a trained model)"
"""How reports flag a model (or run) with randomly initialised weights."""

LOCATION_KEYS = ("checkpoint", "file", "location")
"""``ModelInfo.extra`` keys that say where weight files lie: not part of ``Model.identity``
(the weights hash covers their contents)."""


class TextEncoder(Protocol):
    """Anything that maps texts into the joint embedding space."""

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Unnormalised text embeddings: list of n strings -> [n, d]."""
        ...


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a model in every manifest solens writes."""

    name: str
    pretrained: str | None
    quick_gelu: bool
    image_size: int
    patch_size: int
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    d_embed: int
    n_tokens: int
    source: str = "open_clip"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_random(info: ModelInfo | Mapping[str, Any]) -> bool:
    """True when ``info`` (a ``ModelInfo`` or a manifest's ``model`` dict) describes
    randomly initialised weights: ``pretrained == "random"`` or ``extra["weights"] ==
    "random"`` (runs written before ``"random"`` was the pretrained label have the latter)."""
    if isinstance(info, ModelInfo):
        pretrained, extra = info.pretrained, info.extra
    else:
        pretrained, extra = info.get("pretrained"), info.get("extra") or {}
    return pretrained == RANDOM or extra.get("weights") == RANDOM


def state_sha256(module: nn.Module, skip_prefix: str | None = None) -> str:
    """sha256 over a module's state dict: per entry, sorted by name, the name and shape
    (``f"{name}{shape}"``) then the values as float32 bytes. Entries whose name starts
    with ``skip_prefix`` are left out.

    Run manifests (``weights_sha256``) and the text-embedding cache keys hold these
    digests: changing the recipe orphans existing run folders and cache entries.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip_prefix is not None and name.startswith(skip_prefix):
            continue
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(f"{name}{tuple(a.shape)}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_supported(visual: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` unless ``visual`` is a tower the lens can trace."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    kind = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(f"vision tower {kind} is not supported; supported: {SUPPORTED}")
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError(
            f"attentional pooling is not supported; supported: {SUPPORTED}"
        )
    if getattr(visual, "pool_type", "tok") != "tok":
        raise UnsupportedModelError(
            f"pool_type {visual.pool_type!r} (mean/none pooling) is not supported; "
            f"supported: {SUPPORTED}"
        )
    if visual.proj is None:
        raise UnsupportedModelError("vision tower without a projection is not supported")
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(
            block.attn, nn.MultiheadAttention
        ):
            raise UnsupportedModelError(
                f"block {i} is a {type(block).__name__}; supported: {SUPPORTED}"
            )
        if hasattr(block, "ln_1_kv"):
            raise UnsupportedModelError("cross-attention blocks are not supported")
        if not block.attn._qkv_same_embed_dim:
            raise UnsupportedModelError("attention with separate q/k/v dims is not supported")


def describe_visual(visual: nn.Module, **kw: Any) -> ModelInfo:
    """Build ``ModelInfo`` from a supported open_clip vision tower."""
    from open_clip.transformer import QuickGELU

    visual = as_tower(visual)
    blocks = visual.transformer.resblocks
    b0 = blocks[0]
    grid = visual.grid_size
    return ModelInfo(
        quick_gelu=isinstance(b0.mlp.gelu, QuickGELU),
        image_size=int(visual.image_size[0]),
        patch_size=int(visual.patch_size[0]),
        n_layers=len(blocks),
        n_heads=b0.attn.num_heads,
        d_model=b0.attn.embed_dim,
        d_mlp=b0.mlp.c_fc.out_features,
        d_embed=int(visual.proj.shape[1]),
        n_tokens=int(grid[0] * grid[1] + 1),
        **kw,
    )


class OpenClipTextEncoder:
    """Text side of an open_clip ``CLIP``: tokenise then ``encode_text`` in batches."""

    def __init__(self, clip_model: nn.Module, tokenizer: Callable, batch_size: int = 256):
        self.clip_model = as_clip(clip_model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        device = next(self.clip_model.parameters()).device
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(device)
            out.append(self.clip_model.encode_text(tokens).float())
        return torch.cat(out) if out else torch.zeros(0, 0)


class Model:
    """A CLIP-like model: an open_clip ``VisionTransformer``, a text encoder, preprocessing.

    ``preprocess`` maps a PIL image to a float tensor [3, S, S]; ``encode_image`` takes a
    batch [B, 3, S, S] and returns the unnormalised embedding f(I) [B, d].
    """

    def __init__(
        self,
        visual: nn.Module,
        text: TextEncoder | None,
        preprocess: Callable[[Any], Tensor] | None,
        info: ModelInfo,
        *,
        owner: nn.Module | None = None,
    ) -> None:
        check_supported(visual)
        self.visual = as_tower(visual.eval())
        self.text = text
        self.preprocess = preprocess
        self.info = info
        self.owner = owner

    @classmethod
    def from_open_clip(
        cls,
        clip_model: nn.Module,
        preprocess: Callable[[Any], Tensor] | None = None,
        tokenizer: Callable | None = None,
        *,
        name: str = "custom",
        pretrained: str | None = None,
        source: str = "open_clip",
    ) -> Model:
        """Wrap an open_clip ``CLIP`` the user already has (text tower used if present).

        ``pretrained`` labels the weights in reports and run manifests; ``"random"``
        (``RANDOM``) marks randomly initialised ones (``info.extra["weights"] == "random"``).
        """
        visual = getattr(clip_model, "visual", None)
        if visual is None:
            raise UnsupportedModelError(f"{type(clip_model).__name__} has no .visual tower")
        check_supported(visual)
        text = None
        if hasattr(clip_model, "encode_text"):
            if tokenizer is None:
                import open_clip

                tokenizer = open_clip.get_tokenizer("ViT-B-32")
            text = OpenClipTextEncoder(clip_model, tokenizer)
        extra = {"weights": RANDOM} if pretrained == RANDOM else {}
        info = describe_visual(visual, name=name, pretrained=pretrained, source=source, extra=extra)
        clip_model.eval()
        return cls(visual, text, preprocess, info, owner=clip_model)

    # --- devices and dtypes -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.visual.proj.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.proj.dtype

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Model:
        """Move the whole model (in place); returns self."""
        target = self.owner if self.owner is not None else self.visual
        target.to(device=device, dtype=dtype)
        if self.text is not None and isinstance(self.text, nn.Module) and self.owner is None:
            self.text.to(device=device)
        self.__dict__.pop("weights", None)
        self.__dict__.pop("weights_sha256", None)
        return self

    # --- forward passes -----------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """f(I), unnormalised: [B, 3, S, S] -> [B, d]."""
        out = self.visual(images.to(self.device, self.dtype))
        return out[0] if isinstance(out, tuple) else out  # towers with output_tokens=True

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Unnormalised text embeddings: n strings -> [n, d]."""
        if self.text is None:
            raise UnsupportedModelError(f"model {self.info.name} has no text encoder")
        if isinstance(texts, str):
            texts = [texts]
        return self.text.encode(list(texts))

    @torch.no_grad()
    def trace(self, images: Tensor, names: Iterable[str] | None = None) -> Trace:
        """Traced forward of ``images`` [B, 3, S, S]; see ``solens.models.trace``."""
        return run_trace(self.visual, images.to(self.device, self.dtype), names)

    @cached_property
    def weights(self) -> ViTWeights:
        """Parameters in lens layout (recomputed after ``to``)."""
        return vit_weights(self.visual)

    # --- identity -----------------------------------------------------------------------
    @cached_property
    def weights_sha256(self) -> str:
        """sha256 of the vision tower's state dict (``state_sha256``), hex.

        Memoised; recomputed after ``to``. In-place edits of the parameters are not seen:
        ``del model.weights_sha256`` after them.
        """
        return state_sha256(self.visual)

    def identity(self) -> dict[str, Any]:
        """What a run folder records as its model: ``ModelInfo.to_dict()`` without the
        file locations of ``info.extra`` (``LOCATION_KEYS``; ``weights_sha256`` covers the
        contents). A run resumes only when this is equal."""
        info = self.info.to_dict()
        info["extra"] = {k: v for k, v in info.get("extra", {}).items() if k not in LOCATION_KEYS}
        return info

    def text_identity(self) -> dict[str, Any]:
        """What identifies the text encoder in the text-embedding cache key: name,
        pretrained tag, QuickGELU, source and ``text_weights_sha256``, a ``state_sha256``
        of the text-side parameters (everything of ``owner`` but ``visual.*``, else of
        ``text``; None when neither is a torch module). Not memoised."""
        info = self.info
        module = self.owner if self.owner is not None else self.text
        text_sha = (
            state_sha256(module, skip_prefix="visual.") if isinstance(module, nn.Module) else None
        )
        return {
            "name": info.name,
            "pretrained": info.pretrained,
            "quick_gelu": bool(info.quick_gelu),
            "source": info.source,
            "text_weights_sha256": text_sha,
        }

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Model({i.name!r}, pretrained={i.pretrained!r}, layers={i.n_layers}, "
            f"heads={i.n_heads}, width={i.d_model}, quick_gelu={i.quick_gelu})"
        )
