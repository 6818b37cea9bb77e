"""Run store: chunked arrays, writer/reader round trips, resume after crashes, datasets,
streaming compute against ``second_order`` and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from solens.errors import InputError, RunMismatchError, SolensError
from solens.lens.second_order import coefficients, second_order, trace_names
from solens.store import (
    ChunkedArray,
    FolderImages,
    Run,
    RunWriter,
    arrays,
    export_effects,
    run_effects,
)
from solens.store.arrays import atomic_path, save_json_atomic, save_npy_atomic
from solens.store.export import parse_neurons
from solens.store.run import IDENTITY_KEYS
from solens.store.shards import open_source
from tests.store_helpers import image_folder, tiny_model

FIXTURES = HealthCheck.function_scoped_fixture


@pytest.fixture(autouse=True)
def _fast(monkeypatch, one_thread):
    """Tiny models on shared cores: one intra-op thread is ~10x faster and deterministic;
    no fsync (renames keep files atomic against process kills; fsync only adds power-loss
    durability)."""
    monkeypatch.setattr(arrays, "FSYNC", False)


# --- chunked arrays ---------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[FIXTURES])
@given(
    lengths=st.lists(st.integers(0, 5), min_size=1, max_size=5),
    data=st.data(),
)
def test_chunked_array_indexing(tmp_path_factory, lengths, data):
    folder = tmp_path_factory.mktemp("ca")
    full = np.arange(sum(lengths) * 6, dtype=np.float32).reshape(-1, 2, 3)
    files, o = [], 0
    for i, n in enumerate(lengths):
        files.append(folder / f"c{i}.npy")
        np.save(files[-1], full[o : o + n])
        o += n
    ca = ChunkedArray(files)
    ca.MAX_OPEN = 2  # exercise the eviction of memory maps
    assert ca.shape == full.shape and len(ca) == len(full)
    np.testing.assert_array_equal(np.asarray(ca), full)
    if len(full):
        a = data.draw(st.integers(-len(full), len(full)))
        b = data.draw(st.integers(-len(full), len(full)))
        np.testing.assert_array_equal(ca[a:b], full[a:b])
        np.testing.assert_array_equal(ca[a:b:2], full[a:b:2])
        i = data.draw(st.integers(-len(full), len(full) - 1))
        np.testing.assert_array_equal(ca[i], full[i])
        np.testing.assert_array_equal(ca[i, 1], full[i, 1])
        np.testing.assert_array_equal(ca[a:b, :, 2], full[a:b, :, 2])
        idx = data.draw(st.lists(st.integers(0, len(full) - 1), max_size=8))
        np.testing.assert_array_equal(ca[np.array(idx, dtype=int)], full[idx])
    assert sum(c.shape[0] for c in ca.chunks()) == len(full)
    assert len(ca._maps) <= 2


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "a.npy"
    save_npy_atomic(target, np.ones(3, np.float32))

    def boom(f, arr, allow_pickle=False):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        save_npy_atomic(target, np.zeros(3, np.float32))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
    save_json_atomic(tmp_path / "m.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, 2]}


def test_atomic_path_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "phi.npy"
    with atomic_path(target) as a, atomic_path(target) as b:  # two writers, two temp files
        assert a != b and a.parent == b.parent == tmp_path and not target.exists()
        np.lib.format.open_memmap(a, mode="w+", dtype=np.float32, shape=(2, 3))[:] = 1.0
        with open(b, "wb") as f:
            np.save(f, np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(np.load(target), np.full((2, 3), 1.0))  # a renamed last
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as c:
        c.write_bytes(b"partial")
        raise KeyboardInterrupt
    np.testing.assert_array_equal(np.load(target), np.full((2, 3), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["phi.npy"]


# --- writer / reader ----------------------------------------------------------------------
def _identity(n_candidates: int, chunk: int, **over) -> dict:
    ident = {
        "format_version": 1,
        "model": {"name": "fake", "d_embed": 3},
        "weights_sha256": "0" * 64,
        "preprocess": "none",
        "layers": [0],
        "dataset": {"kind": "test", "n": n_candidates, "fingerprint": "f"},
        "chunk_size": chunk,
        "arrays": {
            "embeddings": {"tail": [3], "dtype": "float32"},
            "layer-00/s": {"tail": [2, 2], "dtype": "float32"},
        },
    }
    ident.update(over)
    return ident


def _images(n: int) -> dict:
    return {
        "root": None,
        "paths": [f"img{i}.png" for i in range(n)],
        "labels": [f"c{i % 3}" for i in range(n)],
        "classes": ["c0", "c1", "c2"],
    }


def _rows(idx: list[int]) -> dict[str, np.ndarray]:
    i = np.asarray(idx, dtype=np.float32)
    return {
        "embeddings": np.stack([i, i + 0.5, -i], -1).reshape(-1, 3),
        "layer-00/s": (i[:, None, None] * np.arange(4, dtype=np.float32).reshape(2, 2)),
    }


class Crash(Exception):
    pass


def _write(path: Path, n: int, cs: int, skip: set[int], crash_after: int | None = None) -> None:
    with RunWriter.open(path, _identity(n, cs), _images(n)) as w:
        for k in w.pending():
            start, stop = w.chunk_range(k)
            kept = [i for i in range(start, stop) if i not in skip]
            sk = [
                {"index": i, "path": f"img{i}.png", "reason": "bad"}
                for i in range(start, stop)
                if i in skip
            ]
            w.write_chunk(k, _rows(kept), sk, seconds=0.0)
            if crash_after is not None and k == crash_after:
                raise Crash
        w.finish(compute_s=1.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[FIXTURES])
@given(
    n=st.integers(1, 30),
    cs=st.integers(1, 9),
    skip=st.sets(st.integers(0, 29), max_size=6),
    crash=st.one_of(st.none(), st.integers(0, 5)),
)
def test_writer_reader_roundtrip_and_resume(tmp_path_factory, n, cs, skip, crash):
    skip = {i for i in skip if i < n}
    ref = tmp_path_factory.mktemp("ref")
    _write(ref, n, cs, skip)
    path = tmp_path_factory.mktemp("run")
    n_chunks = -(-n // cs)
    if crash is not None and crash < n_chunks:
        with pytest.raises(Crash):
            _write(path, n, cs, skip, crash_after=crash)
        partial = Run.open(path)
        assert not partial.complete
        assert partial.n_images == sum(1 for i in range(min(n, (crash + 1) * cs)) if i not in skip)
        # a half-written next chunk (shard on disk, not in the manifest) is invisible and redone
        (path / "embeddings").mkdir(exist_ok=True)
        np.save(path / "embeddings" / f"chunk-{crash + 1:06d}.npy", np.full((1, 3), 7, np.float32))
        (path / "embeddings" / ".chunk-000099.npy.abc.tmp").write_bytes(b"junk")
    _write(path, n, cs, skip)
    run, want = Run.open(path), Run.open(ref)
    kept = [i for i in range(n) if i not in skip]
    assert run.complete == bool(kept) and run.n_images == len(kept)  # 0 images: not complete
    assert run.image_paths == [f"img{i}.png" for i in kept] == want.image_paths
    assert run.labels == [f"c{i % 3}" for i in kept]
    assert list(run.label_ids) == [i % 3 for i in kept]
    assert [s["index"] for s in run.skipped] == sorted(skip)
    exp = _rows(kept)
    for name in ("embeddings", "layer-00/s"):
        np.testing.assert_array_equal(np.asarray(run.array(name)), exp[name])
        np.testing.assert_array_equal(np.asarray(run.array(name)), np.asarray(want.array(name)))
    assert not list(path.rglob("*.tmp"))
    rows = 0
    for ch in run.iter_chunks(names=["embeddings"]):
        np.testing.assert_array_equal(ch["embeddings"], exp["embeddings"][ch.start : ch.stop])
        assert ch.image_paths == run.image_paths[ch.start : ch.stop]
        rows += ch.rows
    assert rows == len(kept)


def test_resume_refuses_a_different_run(tmp_path):
    _write(tmp_path / "r", 5, 2, set())
    for key, value in [
        ("layers", [1]),
        ("chunk_size", 3),
        ("weights_sha256", "1" * 64),
        ("dataset", {"kind": "test", "n": 5, "fingerprint": "g"}),
    ]:
        assert key in IDENTITY_KEYS
        with pytest.raises(RunMismatchError, match=key):
            RunWriter.open(tmp_path / "r", _identity(5, 2, **{key: value}), _images(5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    with pytest.raises(RunMismatchError, match="not a solens run"):
        RunWriter.open(tmp_path / "other", _identity(5, 2), _images(5))
    with pytest.raises(InputError, match="not a solens run"):
        Run.open(tmp_path / "other")


def test_second_writer_is_locked_out(tmp_path):
    with (
        RunWriter.open(tmp_path / "r", _identity(4, 2), _images(4)),
        pytest.raises(SolensError, match="in use"),
    ):
        RunWriter.open(tmp_path / "r", _identity(4, 2), _images(4))
    RunWriter.open(tmp_path / "r", _identity(4, 2), _images(4)).close()


# --- datasets -----------------------------------------------------------------------------
def test_folder_images(tmp_path):
    root = image_folder(tmp_path / "imgs", n=4)
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"x")
    src = FolderImages.scan(root)
    assert src.ids == sorted(src.ids)
    assert "cat/broken.JPG" in src.ids and "notes.txt" not in src.ids
    assert ".hidden.png" not in src.ids
    assert src.labels == [i.split("/")[0] for i in src.ids]
    for name in ("dog/gray.png", "dog/rgba.PNG", "cat/palette.png"):
        im = src.load(src.ids.index(name))
        assert (im.mode == "RGB" and im.size == (40, 40)) or name == "cat/palette.png"
    with pytest.raises(Exception):  # noqa: B017 - any decoding error; the run records it
        src.load(src.ids.index("cat/broken.JPG"))
    fp = src.describe()["fingerprint"]
    assert FolderImages.scan(root).describe()["fingerprint"] == fp
    Image.new("RGB", (8, 8)).save(root / "dog" / "new.png")
    assert FolderImages.scan(root).describe()["fingerprint"] != fp
    flat = image_folder(tmp_path / "flat", n=3, labels=False, extras=False)
    assert FolderImages.scan(flat).labels is None
    with pytest.raises(InputError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path / "empty")


def test_synth_spec_parsing():
    for bad in ("synth:balanced", "synth:nosplit:5", "synth:balanced:x", "synth:balanced:0"):
        with pytest.raises(InputError):
            open_source(bad)


# --- streaming compute --------------------------------------------------------------------
def _pixels(model, run: Run) -> torch.Tensor:
    root = Path(run.image_root)
    return torch.stack(
        [model.preprocess(Image.open(root / p).convert("RGB")) for p in run.image_paths]
    )


def test_run_effects_matches_second_order_and_exports(tmp_path):
    model = tiny_model()
    root = image_folder(tmp_path / "imgs", n=7, extras=False)
    Image.fromarray(np.full((20, 20, 4), 128, np.uint8), "RGBA").save(root / "dog" / "rgba.png")
    (root / "cat" / "trunc.png").write_bytes((root / "cat" / "img001.png").read_bytes()[:60])
    run = run_effects(
        model, root, [1, 2], tmp_path / "run", batch_size=3, chunk_size=4, progress=False
    )
    assert run.complete and run.n_images == 8 and run.layers == [1, 2]
    assert [s["path"] for s in run.skipped] == ["cat/trunc.png"]
    assert run.layer(1).s.shape == (8, 128, 8) and run.layer(2).s.shape == (8, 128, 4)
    x = _pixels(model, run)
    tr = model.trace(x, trace_names([1, 2], 4))
    np.testing.assert_allclose(
        np.asarray(run.embeddings), tr.embedding.numpy(), rtol=1e-5, atol=1e-6
    )
    for layer in (1, 2):
        c = coefficients(model, tr, layer)
        view = run.layer(layer)
        np.testing.assert_allclose(np.asarray(view.s), c.s.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(view.offset), c.offset.numpy(), rtol=1e-5, atol=1e-6)
        exact = second_order(model, x, layer).numpy()
        np.testing.assert_allclose(
            np.asarray(view.norms), np.linalg.norm(exact, axis=-1), rtol=1e-4, atol=1e-6
        )
        for conv in ("exact", "official"):
            ref = (
                exact if conv == "exact" else second_order(model, x, layer, convention=conv).numpy()
            )
            out = export_effects(run, layer, tmp_path / f"e{layer}{conv}.npy", convention=conv)
            got = np.load(out)
            assert got.shape == ref.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    sub = export_effects(run, 2, tmp_path / "sub.npy", neurons=[5, 0, 7])
    np.testing.assert_allclose(
        np.load(sub), exact[:, [5, 0, 7]], rtol=1e-4, atol=1e-5 * np.abs(exact).max()
    )
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_effects_resumes_after_crash_identically(tmp_path):
    model = tiny_model(seed=1)
    root = image_folder(tmp_path / "imgs", n=10)  # 15 candidates, one corrupt
    kw = dict(batch_size=2, chunk_size=3, progress=False)
    full = run_effects(model, root, [0, 2], tmp_path / "full", **kw)

    def crash(k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_effects(model, root, [0, 2], tmp_path / "part", on_chunk=crash, **kw)
    part = Run.open(tmp_path / "part")
    assert not part.complete and [c.index for c in part.manifest.chunks] == [0, 1, 2]
    resumed = run_effects(
        model, root, [0, 2], tmp_path / "part", batch_size=4, progress=False
    )  # chunk size from the manifest; batch size free
    assert resumed.complete and resumed.manifest.chunk_size == 3
    sessions = resumed.manifest.sessions
    assert [s["finished"] is None for s in sessions] == [True, False]  # killed, resumed
    assert resumed.manifest.resumed and resumed.manifest.timings["images_per_s"] > 0
    assert resumed.image_paths == full.image_paths and resumed.labels == full.labels
    assert resumed.skipped == full.skipped and len(full.skipped) == 1
    for name in full.manifest.arrays:
        np.testing.assert_allclose(
            np.asarray(resumed.array(name)), np.asarray(full.array(name)), rtol=1e-6, atol=1e-7
        )
    with pytest.raises(RunMismatchError, match="layers"):
        run_effects(model, root, [0, 1], tmp_path / "part", **kw)
    with pytest.raises(RunMismatchError, match="weights_sha256"):
        run_effects(tiny_model(seed=2), root, [0, 2], tmp_path / "part", **kw)
    Image.new("RGB", (8, 8)).save(root / "cat" / "extra.png")
    with pytest.raises(RunMismatchError, match="dataset"):
        run_effects(model, root, [0, 2], tmp_path / "part", **kw)


def test_run_effects_validation(tmp_path):
    model = tiny_model()
    root = image_folder(tmp_path / "imgs", n=2, extras=False)
    with pytest.raises(InputError, match=r"valid layers are 0\.\.2"):
        run_effects(model, root, [3], tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="no layers"):
        run_effects(model, root, [], tmp_path / "r", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="none of the 1 images"):
        run_effects(model, bad, [1], tmp_path / "r2", progress=False)
    run = Run.open(tmp_path / "r2")
    assert not run.complete and run.n_images == 0  # not a "complete" run of no images


def test_export_refuses_partial_runs_and_bad_neurons(tmp_path):
    model = tiny_model()
    root = image_folder(tmp_path / "imgs", n=6, extras=False)

    def crash(k: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_effects(model, root, [2], tmp_path / "r", chunk_size=2, progress=False, on_chunk=crash)
    with pytest.raises(InputError, match="incomplete"):
        export_effects(tmp_path / "r", 2, tmp_path / "e.npy")
    out = export_effects(tmp_path / "r", 2, tmp_path / "e.npy", allow_partial=True)
    assert np.load(out).shape == (2, 128, 16)
    assert parse_neurons(["3", "5:8", "1,2", ":2"], 10) == [3, 5, 6, 7, 1, 2, 0, 1]
    assert parse_neurons(None, 10) is None
    for bad in (["10"], ["a"], ["3:3"]):
        with pytest.raises(InputError):
            parse_neurons(bad, 10)


def test_run_effects_on_synth_scenes(tmp_path):
    from solens.synth import sample

    model = tiny_model()
    run = run_effects(model, "synth:balanced:5:1", [2], tmp_path / "r", batch_size=4,
                      progress=False)  # fmt: skip
    scenes = sample(5, "balanced", 1)
    assert run.manifest.dataset["kind"] == "synth" and run.n_images == 5
    assert run.labels == [s.label for s in scenes]
    assert run.image_paths[0] == "synth:balanced:1:0000000"
    x = torch.stack([model.preprocess(s.image.convert("RGB")) for s in scenes])
    np.testing.assert_allclose(np.asarray(run.layer(2).norms),
                               np.linalg.norm(second_order(model, x, 2).numpy(), axis=-1),
                               rtol=1e-4, atol=1e-6)  # fmt: skip


def test_a_run_killed_while_being_created_can_start_again(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "images.json").write_text("{}")
    _write(tmp_path / "r", 3, 2, set())
    assert Run.open(tmp_path / "r").n_images == 3


# --- protocol: documents written by solens 0.1.0, versions, Run methods --------------------
def test_a_v1_run_folder_reads_through_the_typed_protocol(tmp_path):
    from solens.store.protocol import ChunkRecord, ImagesRecord, Manifest, SkippedRecord
    from tests.store_helpers import write_v1_run

    v1 = write_v1_run(tmp_path / "run", tmp_path / "imgs")
    run = Run.open(tmp_path / "run")
    m = run.manifest
    assert isinstance(m, Manifest) and isinstance(run.images_record, ImagesRecord)
    assert m.to_dict() == v1["manifest"] and run.images_record.to_dict() == v1["images"]
    assert Manifest.from_dict(v1["manifest"]) == m
    assert m.format_version == 1 and m.run_id == run.run_id == "0123456789abcdef"
    assert m.chunks[0] == ChunkRecord(0, 0, 3, 2, [1], 0.5) and m.chunk_size == 3
    assert m.skipped == [SkippedRecord(1, "cat/img3.png", "OSError: truncated")]
    assert m.arrays["layer-01/s"].tail == (3, 2) and m.resumed and m.sessions[0]["host"] == "h"
    assert m.identity() == {k: v1["manifest"][k] for k in IDENTITY_KEYS}
    # convenience properties
    assert run.complete and run.n_images == 4 and run.layers == [1] and run.n_neurons == 3
    assert run.row_candidates == [0, 2, 3, 4]
    assert run.image_paths == ["cat/img1.png", "dog/img0.png", "dog/img2.png", "dog/img4.png"]
    assert run.labels == ["cat", "dog", "dog", "dog"] and run.classes == ["cat", "dog"]
    assert run.skipped == v1["manifest"]["skipped"] and run.model["d_mlp"] == 3
    np.testing.assert_array_equal(np.asarray(run.layer(1).s), v1["arrays"]["layer-01/s"])
    np.testing.assert_array_equal(run.layer(1).directions(), v1["arrays"]["directions-exact"])
    # written back: the same keys with the same values
    m.write(tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == v1["manifest"]
    run.images_record.write(tmp_path / "i.json")
    assert json.loads((tmp_path / "i.json").read_text()) == v1["images"]
    # a v1 run resumes with its own identity (nothing pending) and stays readable
    ident = {k: v1["manifest"][k] for k in IDENTITY_KEYS}
    with RunWriter.open(tmp_path / "run", ident, v1["images"]) as w:
        assert w.pending() == [] and len(w.manifest.resumed) == 2
        w.finish()
    again = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {k: again[k] for k in ("chunks", "skipped", "static", "arrays")} == {
        k: v1["manifest"][k] for k in ("chunks", "skipped", "static", "arrays")
    }


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format_version": 3}, r"format_version 3, newer than this solens .* reads "
                                r"\(solens-run format_version 1 or 2\); upgrade solens"),
        ({"format_version": 0}, r"format_version 0; this solens .* reads solens-run "
                                r"format_version 1 or 2 only; re-create the run"),
        ({"format_version": "1"}, r"no valid format_version \(found '1'\)"),
        ({"format": "other"}, r"not a solens run manifest \(format 'other'"),
        ({"chunk_size": None}, r"malformed solens run manifest"),
    ],
)  # fmt: skip
def test_manifest_versions_and_errors_name_the_file(tmp_path, capsys, change, message):
    from solens.cli import main
    from tests.store_helpers import write_v1_run

    write_v1_run(tmp_path / "run", tmp_path / "imgs")
    mpath = tmp_path / "run" / "manifest.json"
    _edit_json(mpath, **change)
    with pytest.raises(InputError, match=message) as e:
        Run.open(tmp_path / "run")
    assert str(mpath) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match=message):  # the writer refuses it too
        RunWriter.open(tmp_path / "run", _identity(5, 3), _images(5))
    with pytest.raises(SystemExit) as ex:
        main(["export", str(tmp_path / "run"), "--layer", "1", "--out", str(tmp_path / "e.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2 and len(err) == 1 and str(mpath) in err[0]


def test_images_json_errors(tmp_path):
    from tests.store_helpers import write_v1_run

    write_v1_run(tmp_path / "run", tmp_path / "imgs")
    ipath = tmp_path / "run" / "images.json"
    _edit_json(ipath, labels=["cat"])
    with pytest.raises(InputError, match=r"images\.json is a malformed .*1 labels for 5 paths"):
        Run.open(tmp_path / "run")
    _edit_json(ipath, labels=None, paths=["a.png"])
    with pytest.raises(InputError, match="lists 1 candidates"):
        Run.open(tmp_path / "run")
    ipath.unlink()
    with pytest.raises(InputError, match=r"images\.json does not exist"):
        Run.open(tmp_path / "run")


def test_require_complete(tmp_path):
    _write(tmp_path / "done", 4, 2, set())
    Run.open(tmp_path / "done").require_complete()
    with pytest.raises(Crash):
        _write(tmp_path / "part", 4, 2, set(), crash_after=0)
    part = Run.open(tmp_path / "part")
    with pytest.raises(InputError, match=r"incomplete \(2 images so far\); re-run `solens eff"):
        part.require_complete()
    part.require_complete(allow_partial=True)


def test_run_images_rebuilds_the_folder_dataset(tmp_path):
    from tests.store_helpers import write_v1_run

    write_v1_run(tmp_path / "run", tmp_path / "imgs")
    run = Run.open(tmp_path / "run")
    src = run.images()
    assert isinstance(src, FolderImages) and src.ids == run.images_record.paths
    assert src.labels == run.images_record.labels
    assert src.fingerprint_v1() == run.manifest.dataset["fingerprint"]  # paths, sizes, mtimes
    row = 2  # candidate 3
    im = src.load(run.row_candidates[row])
    want = Image.open(tmp_path / "imgs" / run.image_paths[row]).convert("RGB")
    assert np.array_equal(np.asarray(im), np.asarray(want))
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "cat" / "img3.png")  # changed file
    with pytest.raises(InputError, match="differ from those of run"):
        run.images()
    assert run.images(verify=False).ids == src.ids
    (tmp_path / "imgs" / "dog" / "img4.png").unlink()
    with pytest.raises(InputError, match=r"changed: .*img4\.png"):
        run.images()
    (tmp_path / "imgs").rename(tmp_path / "moved")
    with pytest.raises(InputError, match=r"does not exist any more \(moved or deleted\)"):
        run.images(verify=False)


def test_run_images_rebuilds_the_synth_dataset(tmp_path):
    from solens.store import SynthImages

    model = tiny_model()
    run = run_effects(model, "synth:balanced:3:1", [2], tmp_path / "r", progress=False)
    src = run.images()
    assert isinstance(src, SynthImages) and src.ids == run.image_paths and len(src) == 3
    assert src.labels == run.labels
    mpath = tmp_path / "r" / "manifest.json"
    spec = run.manifest.dataset
    _edit_json(mpath, dataset={**spec, "fingerprint": "0" * 64})
    with pytest.raises(InputError, match="another scene-spec version"):
        Run.open(tmp_path / "r").images()
    _edit_json(mpath, dataset={**spec, "spec": "synth:nosplit:3"})
    with pytest.raises(InputError, match="no longer parses: unknown synthetic split"):
        Run.open(tmp_path / "r").images()
