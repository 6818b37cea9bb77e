"""WebDataset tar shards as an image source: expansion, global index, random access, runs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from solens.errors import InputError
from solens.store import Run, run_effects
from solens.store.shards import ShardImages, expand_shards, is_shard_spec, open_source
from tests.helpers import run_cli, tiny_model

PER_SHARD = (4, 3, 5)


def _png(rng: np.random.Generator, mode: str = "RGB") -> bytes:
    arr = rng.integers(0, 256, (20 + int(rng.integers(0, 20)), 24, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(folder: Path, per_shard=PER_SHARD, seed: int = 0, corrupt: int | None = 5,
                 ) -> tuple[list[Path], list[bytes], list[str]]:
    """Shards ``folder/train-00{k}.tar`` written by webdataset's TarWriter; returns the
    shard paths, every image's bytes and label in global order. Each shard also holds a
    sample without an image (not a candidate); global image ``corrupt`` is not an image."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, blobs, labels = [], [], []
    g = 0
    for k, n in enumerate(per_shard):
        p = folder / f"train-{k:03d}.tar"
        with wds.TarWriter(str(p)) as w:
            for i in range(n):
                if g == corrupt:
                    data, ext = b"not an image at all", "jpg"
                elif i % 2:
                    data, ext = _jpg(rng), "jpg"
                else:
                    data, ext = _png(rng, "L" if i == 2 else "RGB"), "png"
                label = f"class{(g * 7) % 3}"
                w.write({"__key__": f"s{k}_{i:04d}", ext: data, "cls": label.encode()})
                blobs.append(data)
                labels.append(label)
                g += 1
                if i == 1:
                    w.write({"__key__": f"s{k}_{i:04d}_meta", "json": b'{"x": 1}'})
        paths.append(p)
    return paths, blobs, labels


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shards")
    paths, blobs, labels = write_shards(root / "data")
    return root / "data", paths, blobs, labels


def test_specs_expand_to_the_same_ordered_shards(shards) -> None:
    folder, paths, _, _ = shards
    brace = f"{folder}/train-{{000..002}}.tar"
    glob = f"{folder}/train-*.tar"
    listed = "::".join(str(p) for p in paths)
    for spec in (brace, glob, listed, f"{glob}::{paths[0]}"):  # duplicates dropped
        assert is_shard_spec(spec)
        assert [p.resolve() for p in expand_shards(spec)] == [p.resolve() for p in paths]
    assert [p.name for p in expand_shards(f"{folder}/train-{{002,000}}.tar")] == [
        "train-002.tar", "train-000.tar"]  # brace order is index order
    assert not is_shard_spec(str(folder)) and not is_shard_spec("synth:balanced:4")


def test_global_index_matches_webdataset_order(shards) -> None:
    folder, paths, blobs, labels = shards
    src = open_source(f"{folder}/train-{{000..002}}.tar")
    assert isinstance(src, ShardImages) and len(src) == sum(PER_SHARD)
    # webdataset's own reader, in order, keeping the samples that hold an image
    ref = [s for s in wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
           if "png" in s or "jpg" in s]
    assert [i.split("/", 1)[1] for i in src.ids] == [s["__key__"] for s in ref]
    assert [i.split("/", 1)[0] for i in src.ids] == (
        ["train-000.tar"] * 4 + ["train-001.tar"] * 3 + ["train-002.tar"] * 5)
    assert src.labels == labels
    for i, s in enumerate(ref):
        assert src.read_bytes(i) == (s.get("png") or s.get("jpg")) == blobs[i]
        if i != 5:
            im = src.load(i)
            assert im.mode == "RGB"
            expected = Image.open(io.BytesIO(blobs[i])).convert("RGB")
            np.testing.assert_array_equal(np.asarray(im), np.asarray(expected))
    with pytest.raises(Exception):  # noqa: B017 - PIL's own error for the corrupt image
        src.load(5)


def test_run_over_shards_equals_the_traced_forward(shards, tmp_path: Path) -> None:
    folder, _, blobs, labels = shards
    model = tiny_model(dtype=torch.float32)
    spec = f"{folder}/train-*.tar"
    run = run_effects(model, spec, [1, 2], tmp_path / "run", batch_size=3, chunk_size=5,
                      progress=False, workers=2)
    assert run.complete and run.n_images == len(blobs) - 1
    assert [s["index"] for s in run.skipped] == [5]
    assert run.skipped[0]["path"] == "train-001.tar/s1_0001"
    assert run.manifest.dataset["kind"] == "shards" and run.classes == sorted(set(labels))
    # the same images one by one through the traced forward
    from solens.lens.second_order import coefficients, trace_names
    from solens.store.compute import default_preprocess

    pre = default_preprocess(model)
    src = open_source(spec)
    rows = [i for i in range(len(src)) if i != 5]
    x = torch.stack([pre(src.load(i)) for i in rows])
    tr = model.trace(x, trace_names([1], model.info.n_layers))
    torch.testing.assert_close(torch.from_numpy(np.asarray(run.layer(1).s)),
                               coefficients(model, tr, 1).s, rtol=1e-5, atol=1e-6)
    assert run.image_paths == [src.ids[i] for i in rows]
    # rebuilt from the run folder: the same candidates
    again = Run.open(run.path).images()
    assert isinstance(again, ShardImages) and again.ids == src.ids


def test_changed_or_missing_shards_are_refused(tmp_path: Path) -> None:
    paths, _, _ = write_shards(tmp_path / "d", per_shard=(2, 2), corrupt=None)
    model = tiny_model(dtype=torch.float32)
    run = run_effects(model, f"{tmp_path}/d/*.tar", [2], tmp_path / "run", progress=False)
    write_shards(tmp_path / "d", per_shard=(2, 2), seed=9, corrupt=None)  # other images
    with pytest.raises(InputError, match="changed since it was computed"):
        Run.open(run.path).images()
    paths[1].unlink()
    with pytest.raises(InputError, match="cannot be read any more"):
        Run.open(run.path).images()


def test_bad_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="no shards match"):
        open_source(f"{tmp_path}/none-*.tar")
    with pytest.raises(InputError, match="does not exist"):
        open_source(f"{tmp_path}/a-{{0..1}}.tar")
    (tmp_path / "broken.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError, match=r"cannot read shard .*broken\.tar: invalid header"):
        open_source(str(tmp_path / "broken.tar"))
    with wds.TarWriter(str(tmp_path / "text.tar")) as w:
        w.write({"__key__": "a", "txt": b"hello"})
    with pytest.raises(InputError, match="hold no images"):
        open_source(str(tmp_path / "text.tar"))
    code, _, err = run_cli(["effects", "--model", "ViT-B-32", "--pretrained", "random",
                            "--layers", "9", "--images", f"{tmp_path}/nope-{{0..3}}.tar",
                            "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err


def test_changed_images_in_a_shard_redo_only_their_chunks(tmp_path: Path) -> None:
    """Shards with the same ids but new image contents: a resume names the changed images,
    keeps the chunk of the unchanged shard and equals a fresh run over the new shards."""
    write_shards(tmp_path / "d", per_shard=(2, 2), corrupt=None)
    model = tiny_model(dtype=torch.float32)
    spec = f"{tmp_path}/d/*.tar"
    kw = {"batch_size": 2, "chunk_size": 2, "progress": False}
    run = run_effects(model, spec, [2], tmp_path / "run", **kw)
    rec = run.images_record
    assert rec.sha256 is not None and len(rec.sha256) == 4
    src = open_source(spec)
    import hashlib

    assert rec.sha256 == [hashlib.sha256(src.read_bytes(i)).hexdigest() for i in range(4)]
    kept = (run.path / "layer-02" / "s" / "chunk-000000.npy").stat().st_mtime_ns
    other, _, _ = write_shards(tmp_path / "other", per_shard=(2, 2), seed=9, corrupt=None)
    (tmp_path / "d" / "train-001.tar").write_bytes(other[1].read_bytes())
    with pytest.raises(InputError, match=r"2 images differ: train-001\.tar/s1_0000"):
        Run.open(run.path).images()
    resumed = run_effects(model, spec, [2], tmp_path / "run", **kw)
    session = resumed.manifest.sessions[-1]
    assert session["changed"] == ["train-001.tar/s1_0000", "train-001.tar/s1_0001"]
    assert session["chunks"] == 1 and resumed.run_id != run.run_id
    assert (run.path / "layer-02" / "s" / "chunk-000000.npy").stat().st_mtime_ns == kept
    fresh = run_effects(model, spec, [2], tmp_path / "fresh", **kw)
    np.testing.assert_array_equal(np.asarray(resumed.layer(2).s), np.asarray(fresh.layer(2).s))
    assert resumed.run_id == fresh.run_id
    assert isinstance(Run.open(resumed.path).images(), ShardImages)
