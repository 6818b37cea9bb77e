"""Images with ground-truth foreground masks, for ``solens segment``.

- ``synth:SPLIT:N[:SEED[:SIZE]]``: scenes of the synthetic world; the mask is the exact
  visible area of the primary object (``objects[0]``, the scene's label) from the renderer's
  ownership map (outline included, occluded pixels excluded).
- ``gtsegs_ijcv.mat``: the ImageNet-segmentation benchmark file (Guillaumin et al.; MATLAB
  v7.3 = HDF5): ``value/img`` [n, 1] object references to uint8 arrays stored [3, W, H]
  (MATLAB's column-major order), ``value/gt`` [n, 1] references to 1 x 1 cells whose element
  references the [W, H] mask (non-zero = object); ``value/target`` is not needed.
- an image folder with ``--masks DIR``: a mask per image at the same relative path with any
  image suffix (``a/b.jpg`` -> ``a/b.png``), the same size as its image; non-zero =
  foreground (any channel).
- WebDataset tar shards (any spec of ``solens.store.shards.open_source``) whose every sample
  holds its mask as a ``KEY.mask.png`` member beside the image (same size, non-zero =
  foreground).

Every reader gives ``image(i)`` (RGB PIL image) and ``mask(i)`` (bool [H, W] at the image's
pixels), ``ids``, ``describe()`` (identity for the settings digest).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from solens.errors import InputError
from solens.store.images import IMAGE_SUFFIXES, FolderImages, SynthImages, to_rgb
from solens.store.shards import ShardImages, open_source
from solens.synth.render import render_array


class MaskedImages(Protocol):
    """Images with a foreground mask each."""

    @property
    def ids(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image: ...

    def mask(self, index: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class _OverImages:
    """Ids and length of the image set ``images`` a mask reader pairs masks with."""

    images: FolderImages | ShardImages | SynthImages

    @property
    def ids(self) -> list[str]:
        return self.images.ids

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class SynthMasks(_OverImages):
    """Scenes of the synthetic world with the exact mask of their primary object."""

    images: SynthImages

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(render_array(self.images.spec(index))[0], "RGB")

    def mask(self, index: int) -> np.ndarray:
        return render_array(self.images.spec(index))[1] == 0

    def arrays(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [n, S, S, 3] and masks [n, S, S] of ``indices`` (one render each)."""
        out = [render_array(self.images.spec(i)) for i in indices]
        return np.stack([o[0] for o in out]), np.stack([o[1] == 0 for o in out])

    def describe(self) -> dict[str, Any]:
        return {**self.images.describe(), "masks": "primary object (objects[0]), visible pixels"}


def _file_id(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
                          ).hexdigest()


@dataclass
class MatMasks:
    """The ImageNet-segmentation file ``gtsegs_ijcv.mat`` (HDF5), read lazily with h5py."""

    path: Path
    ids: list[str] = field(default_factory=list)
    _file: Any = None

    def __post_init__(self) -> None:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                n = int(f["value/img"].shape[0])
                if "value/gt" not in f or int(f["value/gt"].shape[0]) != n:
                    raise InputError(f"{self.path}: 'value/gt' missing or not one per image")
        except (OSError, KeyError) as e:
            raise InputError(f"{self.path} is not an ImageNet-segmentation file "
                             f"(MATLAB v7.3 with value/img and value/gt): {e}") from None
        self.ids = [f"{self.path.name}:{i:05d}" for i in range(n)]

    def _h5(self) -> Any:
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Image.Image:
        f = self._h5()
        a = np.asarray(f[f["value/img"][index, 0]]).transpose(2, 1, 0)
        return to_rgb(Image.fromarray(np.ascontiguousarray(a.astype(np.uint8))))

    def mask(self, index: int) -> np.ndarray:
        f = self._h5()
        cell = f[f["value/gt"][index, 0]]
        return np.asarray(f[cell[0, 0]]).T != 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "imagenet-segmentation", "path": str(self.path.resolve()),
                "n": len(self.ids), "fingerprint": _file_id(self.path),
                "fingerprint_of": "path, size, mtime"}


class _MaskFiles(_OverImages):
    """Images of an image set (``images``) with a mask image each (``_open_mask``)."""

    images: FolderImages | ShardImages

    def _open_image(self, index: int) -> Image.Image:
        """The encoded image of candidate ``index``, opened (header read)."""
        raise NotImplementedError

    def _open_mask(self, index: int) -> Image.Image:
        """The mask of candidate ``index``, opened (header read)."""
        raise NotImplementedError

    def _mask_name(self, index: int) -> str:
        raise NotImplementedError

    def check_sizes(self) -> None:
        """``InputError`` naming the first mask whose size is not its image's."""
        for i in range(len(self)):
            with self._open_image(i) as im, self._open_mask(i) as m:
                if im.size != m.size:
                    raise InputError(
                        f"{self._mask_name(i)} is {m.size[0]}x{m.size[1]} pixels but its image "
                        f"{self.ids[i]} is {im.size[0]}x{im.size[1]}; masks must have their "
                        "image's size")

    def image(self, index: int) -> Image.Image:
        return self.images.load(index)

    def mask(self, index: int) -> np.ndarray:
        with self._open_mask(index) as m:
            return mask_array(m)


@dataclass
class FolderMasks(_MaskFiles):
    """An image folder and a mask folder with the same relative paths (suffixes may differ)."""

    images: FolderImages
    masks_root: Path
    mask_paths: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, images: FolderImages, masks: str | Path) -> FolderMasks:
        root = Path(masks)
        if not root.is_dir():
            raise InputError(f"--masks {root} is not a folder")
        found: dict[str, str] = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(
                    part.startswith(".") for part in rel.parts):
                found.setdefault(rel.with_suffix("").as_posix(), rel.as_posix())
        stems = [Path(i).with_suffix("").as_posix() for i in images.ids]
        missing = [i for i, s in zip(images.ids, stems, strict=True) if s not in found]
        extra = sorted(set(found) - set(stems))
        if missing or extra:
            what = (f"no mask for {len(missing)} of {len(stems)} images (first: {missing[0]})"
                    if missing else f"{len(extra)} masks have no image (first: {found[extra[0]]})")
            raise InputError(f"--masks {root} does not match --images {images.root}: {what}; "
                             "each image needs a mask at the same relative path")
        out = cls(images, root, [found[s] for s in stems])
        out.check_sizes()
        return out

    def _open_image(self, index: int) -> Image.Image:
        return Image.open(self.images.root / self.images.ids[index])

    def _open_mask(self, index: int) -> Image.Image:
        return Image.open(self.masks_root / self.mask_paths[index])

    def _mask_name(self, index: int) -> str:
        return f"mask {self.mask_paths[index]}"

    def describe(self) -> dict[str, Any]:
        masks = FolderImages(self.masks_root, self.mask_paths)
        return {**self.images.describe(), "masks_root": str(self.masks_root.resolve()),
                "masks_fingerprint": masks.fingerprint()}


def mask_array(mask: Image.Image) -> np.ndarray:
    """A mask image -> bool [H, W]: non-zero in any channel = foreground."""
    a = np.asarray(mask if mask.mode in ("L", "P", "1", "I", "I;16", "F") else to_rgb(mask))
    return a.reshape(a.shape[0], a.shape[1], -1).max(-1) != 0


MASK_MEMBER = "mask.png"
"""The member extension of a sample's mask in tar shards (``KEY.mask.png``)."""


@dataclass
class ShardMasks(_MaskFiles):
    """Tar shards whose samples hold their mask as a ``KEY.mask.png`` member."""

    images: ShardImages

    @classmethod
    def open(cls, images: ShardImages) -> ShardMasks:
        """Check that every sample has a mask of its image's size (``InputError`` naming
        the first that has not)."""
        members = images.extras.get(MASK_MEMBER) or [None] * len(images)
        missing = [i for i, m in zip(images.ids, members, strict=True) if m is None]
        if missing:
            raise InputError(
                f"--images {images.spec}: {len(missing)} of {len(images)} samples have no "
                f".{MASK_MEMBER} member (first: {missing[0]}); tar shards need each image's "
                f"mask as KEY.{MASK_MEMBER} in its sample")
        out = cls(images)
        out.check_sizes()
        return out

    def _open_image(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.images.read_bytes(index)))

    def _open_mask(self, index: int) -> Image.Image:
        return Image.open(io.BytesIO(self.images.read_extra(MASK_MEMBER, index)))

    def _mask_name(self, index: int) -> str:
        return f"mask {self.ids[index]}.{MASK_MEMBER}"

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for i, ident in enumerate(self.images.ids):
            digest = hashlib.sha256(self.images.read_extra(MASK_MEMBER, i)).hexdigest()
            h.update(f"{ident}\0{digest}\n".encode())
        return {**self.images.describe(), "masks": f"KEY.{MASK_MEMBER} members",
                "masks_fingerprint": h.hexdigest()}


def open_masked(images: str | Path, masks: str | Path | None = None) -> MaskedImages:
    """``synth:...``, a ``.mat`` file, an image folder with ``masks``, or tar shards with
    mask members (see module doc)."""
    s = str(images)
    if s.startswith("synth:"):
        if masks is not None:
            raise InputError("--masks is not used with synthetic images (their masks are exact)")
        src = open_source(s)
        assert isinstance(src, SynthImages)
        return SynthMasks(src)
    p = Path(s)
    if p.suffix.lower() == ".mat":
        if not p.is_file():
            raise InputError(f"--images {p}: no such file")
        return MatMasks(p)
    source = open_source(s, extras=(MASK_MEMBER,))
    if isinstance(source, ShardImages):
        if masks is not None:
            raise InputError(f"--masks is not used with tar shards: each sample holds its "
                             f"mask as a KEY.{MASK_MEMBER} member")
        return ShardMasks.open(source)
    assert isinstance(source, FolderImages)
    if masks is None:
        raise InputError(f"--images {p} is a folder: pass --masks DIR with a mask per image "
                         f"(or use tar shards with KEY.{MASK_MEMBER} members, a "
                         "gtsegs_ijcv.mat file or synth:SPLIT:N)")
    return FolderMasks.open(source, masks)


__all__ = ["MASK_MEMBER", "FolderMasks", "MaskedImages", "MatMasks", "ShardMasks", "SynthMasks",
           "mask_array", "open_masked"]
