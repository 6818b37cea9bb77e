"""Every command that reads an image set takes WebDataset tar shards as it takes an image
folder: ``ablate --eval``, ``discover`` and ``segment --images`` give the same figures on
shards written from a folder's images as on the folder; resumes and refusals follow the
shards' contents; shards without what a command needs are refused in one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from solens.errors import InputError
from solens.store.shards import ShardImages, open_source
from tests.helpers import run_cli
from tests.test_ablate import SYNSETS, _folder, described_run, resume_after_layer_1_lost

KW = {"k": 4, "pc_images": 4, "pc_neurons": 3, "progress": False}


def shards_of(folder: Path, out: Path, per_shard: int = 5, labels: bool = True,
              masks: Path | None = None, name: str = "shard") -> list[Path]:
    """The images of ``folder`` (sorted relative paths, as ``FolderImages`` orders them)
    written into ``out/<name>-00000k.tar`` with webdataset's TarWriter, ``per_shard``
    samples each: the file's bytes as ``png``, its class sub-folder as ``cls`` (with
    ``labels``), the mask at the same relative path under ``masks`` as ``mask.png``."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(0, len(files), per_shard):
        p = out / f"{name}-{k // per_shard:06d}.tar"
        with wds.TarWriter(str(p)) as w:
            for rel in files[k : k + per_shard]:
                sample = {"__key__": rel.replace("/", "_").removesuffix(".png"),
                          "png": (folder / rel).read_bytes()}
                if labels and "/" in rel:
                    sample["cls"] = rel.split("/", 1)[0].encode()
                if masks is not None:
                    sample["mask.png"] = (masks / rel).read_bytes()
                w.write(sample)
        paths.append(p)
    return paths


def figures(result) -> list[dict]:
    """Every layer's figures without their timings."""
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in result.layers]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shard-inputs")
    model, run, _, _ = described_run(tmp)
    folder = _folder(tmp / "eval", SYNSETS, seed=2)  # 3 classes x 4 images
    shards = shards_of(folder, tmp / "shards")  # 12 images in shards of 5, 5, 2
    return {"model": model, "run": run, "tmp": tmp, "folder": folder, "shards": shards}


# --- the opener ---------------------------------------------------------------------------
def test_every_spelling_of_the_shards_opens_the_same_images(env) -> None:
    d = env["tmp"] / "shards"
    specs = [f"{d}/shard-{{000000..000002}}.tar", f"{d}/*.tar", str(d), f"{d}/",
             "::".join(str(p) for p in env["shards"])]
    sources = [open_source(s) for s in specs]
    assert all(isinstance(s, ShardImages) for s in sources)
    first = sources[0]
    assert len(first) == 12 and first.labels == [s for s in SYNSETS for _ in range(4)]
    for s in sources[1:]:
        assert s.ids == first.ids and s.describe()["fingerprint"] == first.fingerprint()
    folder = open_source(env["folder"])
    for i in range(12):
        assert first.read_bytes(i) == (env["folder"] / folder.ids[i]).read_bytes()


def test_a_folder_with_shards_and_images_is_refused(env, tmp_path: Path) -> None:
    mixed = _folder(tmp_path / "mixed", ["a"], per_class=1)
    (mixed / "x.tar").write_bytes(env["shards"][0].read_bytes())
    with pytest.raises(InputError, match=r"holds both \.tar shards \(x\.tar\) and image files "
                                         r"\(a/0\.png\)"):
        open_source(mixed)


# --- ablate -------------------------------------------------------------------------------
def test_ablate_on_shards_equals_ablate_on_the_folder(env) -> None:
    from solens.experiments.ablate import ablate_run

    model, run = env["model"], env["run"]
    on_folder = ablate_run(run, env["folder"], model=model, restart=True, **KW)
    on_shards = ablate_run(run, f"{env['tmp']}/shards/shard-{{000000..000002}}.tar",
                           model=model, restart=True, **KW)
    assert figures(on_shards) == figures(on_folder)
    assert on_shards.summary() == on_folder.summary()
    assert on_shards.settings.classifier == on_folder.settings.classifier  # synsets from .cls
    ev = on_shards.settings.eval
    assert ev["kind"] == "shards" and ev["n"] == 12
    assert ev["fingerprint"] == open_source(env["tmp"] / "shards").fingerprint()
    doc = json.loads((run.path / "ablate" / "ablate.json").read_text())
    assert doc["settings"]["eval"]["kind"] == "shards"
    assert "shard-{000000..000002}.tar (12 images)" in (run.path / "ablate" / "ablate.md"
                                                         ).read_text()
    on_dir = ablate_run(run, env["tmp"] / "shards", model=model, restart=True, **KW)
    assert figures(on_dir) == figures(on_folder)


def test_ablate_resumes_on_the_same_shards_and_refuses_changed_ones(env, monkeypatch,
                                                                    tmp_path: Path) -> None:
    import shutil

    from solens.experiments import ablate as A

    model, run = env["model"], env["run"]
    data = tmp_path / "data"
    shutil.copytree(env["tmp"] / "shards", data)
    spec = f"{data}/shard-{{000000..000002}}.tar"
    first = A.ablate_run(run, spec, model=model, restart=True, **KW)
    done, again = resume_after_layer_1_lost(monkeypatch, run, spec, model=model, **KW)
    assert done == [1] and figures(again) == figures(first)
    # the same ids, one image of other contents (a new shard file): other settings
    other = _folder(tmp_path / "other", SYNSETS, seed=7)
    shards_of(other, tmp_path / "new")
    shutil.copy(tmp_path / "new" / "shard-000002.tar", data / "shard-000002.tar")
    assert open_source(spec).ids == open_source(env["tmp"] / "shards").ids
    with pytest.raises(InputError, match="holds ablations of other settings"):
        A.ablate_run(run, spec, model=model, **KW)
    done.clear()
    redone = A.ablate_run(run, spec, model=model, restart=True, **KW)
    assert done == [0, 1]
    assert redone.settings.eval["fingerprint"] != first.settings.eval["fingerprint"]
    # the same images, one .cls label changed: other settings as well
    samples = list(wds.WebDataset(str(data / "shard-000000.tar"), shardshuffle=False,
                                  empty_check=False))
    with wds.TarWriter(str(data / "shard-000000.tar")) as w:
        for j, x in enumerate(samples):
            cls = SYNSETS[2].encode() if j == 0 else x["cls"]
            w.write({"__key__": x["__key__"], "png": x["png"], "cls": cls})
    relabelled = open_source(spec)
    assert relabelled.fingerprint() == redone.settings.eval["fingerprint"]  # images: the same
    with pytest.raises(InputError, match="holds ablations of other settings"):
        A.ablate_run(run, spec, model=model, **KW)


def test_shards_without_labels_are_refused_in_one_line(env, capsys, tmp_path: Path) -> None:
    run = env["run"].path
    shards_of(env["folder"], tmp_path / "bare", labels=False)
    code, _, err = run_cli(["ablate", str(run), "--eval", str(tmp_path / "bare")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert ("need class labels: a .cls member (the class name) in every sample; 12 of 12 "
            "samples have none (first: shard-000000.tar/n01440764_0)") in lines[0]
    # one sample without its .cls: named
    part = tmp_path / "part.tar"
    with wds.TarWriter(str(part)) as w:
        w.write({"__key__": "a", "png": _png(), "cls": b"n01440764"})
        w.write({"__key__": "b", "png": _png()})
    code, _, err = run_cli(["ablate", str(run), "--eval", str(part)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "1 of 2 samples have none (first: part.tar/b)" \
        in lines[0], lines
    # labels that are not synsets: the message speaks of .cls labels
    cats = tmp_path / "cats.tar"
    with wds.TarWriter(str(cats)) as w:
        w.write({"__key__": "a", "png": _png(), "cls": b"cat"})
    code, _, err = run_cli(["ablate", str(run), "--eval", str(cats)], capsys)
    assert code == 2 and "class names of .cls labels cat" in err and "--classes" in err


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


# --- discover -----------------------------------------------------------------------------
def test_discover_on_shards_equals_the_folder_and_the_files(env) -> None:
    from solens.attack.discover import discover_images

    model, run, folder = env["model"], env["run"], env["folder"]
    kw = {"model": model, "k": 4, "progress": False, "write": False}
    files = [str(folder / i) for i in open_source(folder).ids]

    def words(doc):
        return [(e["words"], e["nearest"]) for e in doc["images"]]

    want = words(discover_images(run, files, **kw))
    assert words(discover_images(run, [str(folder)], **kw)) == want
    shard_doc = discover_images(run, [str(p) for p in env["shards"]], **kw)  # shell-expanded
    assert words(shard_doc) == want
    assert shard_doc["images"][0]["image"] == "shard-000000.tar/n01440764_0"
    assert words(discover_images(run, [str(env["tmp"] / "shards")], **kw)) == want
    doc = discover_images(run, [f"{env['tmp']}/shards/*.tar"], model=model, k=4,
                          progress=False)
    manifest = json.loads((run.path / "discover" / "manifest.json").read_text())
    assert words(doc) == want and manifest["settings"]["images"]["kind"] == "shards"
    with pytest.raises(InputError, match="not both"):
        discover_images(run, [files[0], str(folder)], **kw)


# --- segment ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def masked(env):
    """An image folder with a mask folder, and the same as shards with mask.png members."""
    rng = np.random.default_rng(5)
    im, mk = env["tmp"] / "seg-im", env["tmp"] / "seg-mk"
    for d in (im, mk):
        (d / SYNSETS[0]).mkdir(parents=True)
    for i in range(4):
        W, H = 36 + 4 * i, 32
        a = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        m = np.zeros((H, W), np.uint8)
        m[6:20, 8 + i : 22 + i] = 255
        a[m > 0] = (240, 30, 30)
        Image.fromarray(a).save(im / SYNSETS[0] / f"{i}.png")
        Image.fromarray(m).save(mk / SYNSETS[0] / f"{i}.png")
    shards_of(im, env["tmp"] / "seg-shards", per_shard=3, masks=mk)
    return im, mk, env["tmp"] / "seg-shards"


def test_segment_on_shards_with_mask_members_equals_the_folder(env, masked) -> None:
    from solens.segment.readers import ShardMasks, open_masked
    from solens.segment.run import segment_run

    im, mk, shards = masked
    src = open_masked(shards)
    fol = open_masked(im, mk)
    assert isinstance(src, ShardMasks) and len(src) == len(fol) == 4
    for i in range(4):
        np.testing.assert_array_equal(src.mask(i), fol.mask(i))
        np.testing.assert_array_equal(np.asarray(src.image(i)), np.asarray(fol.image(i)))
    kw = {"model": env["model"], "layers": [0, 1], "k": 6, "n_overlays": 1, "restart": True,
          "progress": False}
    on_folder = segment_run(env["run"], im, masks=mk, **kw)  # classes from the synset folder
    on_shards = segment_run(env["run"], f"{shards}/shard-{{000000..000001}}.tar", **kw)
    assert on_shards.table() == on_folder.table() and on_shards.n_images == 4
    assert on_shards.settings.images["kind"] == "shards"
    assert on_shards.settings.images["masks_fingerprint"] == src.describe()["masks_fingerprint"]
    # masks of other contents: another fingerprint (a resume is refused)
    other = env["tmp"] / "seg-other"
    for p in (mk / SYNSETS[0]).glob("*.png"):
        (other / SYNSETS[0]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(p))).save(other / SYNSETS[0] / p.name)
    shards_of(im, env["tmp"] / "seg-shards2", per_shard=3, masks=other)
    assert open_masked(env["tmp"] / "seg-shards2").describe()["masks_fingerprint"] != (
        src.describe()["masks_fingerprint"])


def test_segment_refuses_shards_without_masks_in_one_line(env, masked, capsys,
                                                         tmp_path: Path) -> None:
    im, mk, shards = masked
    shards_of(im, tmp_path / "nomask", per_shard=3)
    small = tmp_path / "small"
    for p in (mk / SYNSETS[0]).glob("*.png"):
        (small / SYNSETS[0]).mkdir(parents=True, exist_ok=True)
        Image.open(p).resize((20, 16)).save(small / SYNSETS[0] / p.name)
    shards_of(im, tmp_path / "badmask", per_shard=3, masks=small)
    base = ["segment", str(env["run"].path), "--restart", "--no-progress", "--query", "x"]
    for extra, message in (
        (["--images", str(tmp_path / "nomask")],
         "4 of 4 samples have no .mask.png member (first: shard-000000.tar/n01440764_0); tar "
         "shards need each image's mask as KEY.mask.png"),
        (["--images", f"{shards}/*.tar", "--masks", str(mk)],
         "--masks is not used with tar shards"),
        (["--images", str(im)], "or use tar shards with KEY.mask.png members"),
        (["--images", f"{tmp_path}/badmask/shard-{{000000..000001}}.tar"],
         "mask shard-000000.tar/n01440764_0.mask.png is 20x16 pixels but its image "
         "shard-000000.tar/n01440764_0 is 36x32; masks must have their image's size"),
    ):
        code, _, err = run_cli(base + extra, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], lines


# --- a run computed over shards: atlas and `describe show` ----------------------------------
def test_atlas_and_show_of_a_shard_run_equal_those_of_the_folder_run(env, capsys) -> None:
    from solens.atlas.build import build_atlas
    from solens.describe.describe import describe_run, neuron_report
    from solens.store import run_effects

    model, tmp = env["model"], env["tmp"]
    spec = f"{tmp}/ref-shards/*.tar"
    shards_of(tmp / "ref", tmp / "ref-shards", per_shard=4)
    run = run_effects(model, spec, [0, 1], tmp / "shard-run", batch_size=8, progress=False,
                      workers=0)
    assert run.manifest.dataset["kind"] == "shards" and run.n_images == env["run"].n_images
    describe_run(run, str(tmp / "words.txt"), model=model, n_terms=4, k=4)
    sites = {}
    for name, r in (("folder", env["run"]), ("shards", run)):
        sites[name] = tmp / f"site-{name}"
        build_atlas(r, sites[name], model=model, n_top=3, progress=False)
    thumbs = sorted(p.name for p in (sites["folder"] / "img").glob("*.jpg"))
    assert thumbs and thumbs == sorted(p.name for p in (sites["shards"] / "img").glob("*.jpg"))
    for t in thumbs:
        assert (sites["folder"] / "img" / t).read_bytes() == (sites["shards"] / "img" / t
                                                              ).read_bytes()
    for layer in ("00", "01"):
        np.testing.assert_array_equal(
            np.load(sites["folder"] / "cache" / f"heat-layer-{layer}.npy"),
            np.load(sites["shards"] / "cache" / f"heat-layer-{layer}.npy"))
    rep = neuron_report(run, 1, 3, pool="words")
    assert rep["image_set"] == spec and rep["image_root"] is None
    assert rep["top_image_paths"][0].startswith("shard-00000")
    code, out, err = run_cli(["show", str(run.path), "1", "3", "--pool", "words"],
                             capsys)
    assert code == 0, err
    assert f"topimages({spec})" in "".join(out.split()), out  # rich wraps the title
