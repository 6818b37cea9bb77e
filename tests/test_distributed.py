"""Distributed ``solens effects`` (torchrun, 2 CPU processes, gloo) against one process;
merging of rank parts; exact combination of the streaming statistics."""

from __future__ import annotations

import functools
import itertools
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from solens.errors import InputError
from solens.store import Run, run_effects
from solens.store.arrays import save_json_atomic
from solens.store.distributed import (
    PARTS,
    Dist,
    chunk_summary,
    combine_summaries,
    load_summary,
    part_file,
)
from solens.store.run import MANIFEST, chunk_file, layer_dir
from tests.test_shards import write_shards

SRC = Path(__file__).resolve().parents[1] / "src"
CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 8,
                   "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4,
                 "layers": 1},
}


def _model_dir(folder: Path) -> Path:
    from open_clip.model import CLIP

    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    torch.manual_seed(0)
    clip = CLIP(**CFG)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              folder / "open_clip_model.safetensors")
    return folder


def _effects(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}  # the same kernels in both runs: bitwise comparisons
    if nproc == 1:
        cmd = [sys.executable, "-m", "solens", "effects", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "solens", "effects", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _shards(run: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(run.rglob("*.np[yz]")):
        rel = f.relative_to(run).as_posix()
        if f.suffix == ".npz":
            with np.load(f) as z:
                out.update({f"{rel}:{k}": z[k] for k in z.files})
        else:
            out[rel] = np.load(f)
    return out


def _manifest(run: Path) -> dict:
    m = json.loads((run / MANIFEST).read_text())
    for c in m["chunks"]:
        c.pop("seconds")
    return {k: m[k] for k in ("run_id", "n_images", "n_candidates", "complete", "chunks",
                              "skipped", "static", "arrays", "layers", "dataset")}


def effects_inputs(tmp: Path) -> tuple[Path, list[str]]:
    """A random open_clip model in ``tmp/model`` and 23 images in 3 tar shards (one
    undecodable) -> the model folder and the ``solens effects`` arguments but ``--out``
    (2 layers, chunks of 4)."""
    model = _model_dir(tmp / "model")
    write_shards(tmp / "shards", per_shard=(7, 9, 7), corrupt=10)
    return model, ["--model", f"local-dir:{model}", "--layers", "0", "1",
                   "--images", f"{tmp}/shards/train-{{000..002}}.tar",
                   "--chunk-size", "4", "--batch-size", "3", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("dist")
    model, args = effects_inputs(tmp)
    one = _effects([*args, "--out", str(tmp / "one")], 1)
    two = _effects([*args, "--out", str(tmp / "two")], 2)
    assert "22 images (1 skipped)" in one.stdout
    assert two.stdout.count("22 images (1 skipped)") == 1  # rank 0 reports
    assert two.stderr.count("skipped train-001.tar/") == 1  # and lists the skipped once
    return {"one": tmp / "one", "two": tmp / "two", "model": model, "tmp": tmp}


@pytest.mark.slow  # two torchrun launches: ~40 s on an idle 2-core CPU
def test_two_processes_equal_one_bitwise(runs) -> None:
    one, two = runs["one"], runs["two"]
    a, b = _shards(one), _shards(two)
    assert sorted(a) == sorted(b)
    for name in a:  # every shard, direction, chunk summary and combined statistic
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert _manifest(one) == _manifest(two)
    assert not (two / PARTS).exists()
    m2 = json.loads((two / MANIFEST).read_text())
    assert m2["sessions"][-1]["world_size"] == 2 and m2["complete"]
    assert all(set(c["files"]) == set(m2["arrays"]) for c in m2["chunks"])  # rank 1's too
    assert Run.open(two).verify() == []
    assert (one / "images.json").read_text() == (two / "images.json").read_text()


@pytest.mark.slow  # two torchrun launches: ~40 s on an idle 2-core CPU
def test_streaming_statistics_equal_brute_force(runs) -> None:
    run = Run.open(runs["two"])
    cand = np.array(run.row_candidates)
    for layer in run.layers:
        s = np.asarray(run.layer(layer).s, dtype=np.float64)
        norms = np.asarray(run.layer(layer).norms)
        summ = load_summary(run.path, layer)
        assert summ["n_images"] == run.n_images == 22 and summ["run_id"] == run.run_id
        np.testing.assert_allclose(summ["mean_s"], s.mean(0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(summ["mean_norm"], norms.astype(np.float64).mean(0),
                                   rtol=1e-12)
        np.testing.assert_allclose(summ["rms_norm"],
                                   np.sqrt((norms.astype(np.float64) ** 2).mean(0)), rtol=1e-12)
        k = summ["k"]
        assert k == 16
        for n in range(norms.shape[1]):
            order = sorted(range(len(cand)), key=lambda r: (-float(norms[r, n]), cand[r]))[:k]
            assert summ["top_rows"][n].tolist() == order
            assert summ["top_candidates"][n].tolist() == cand[order].tolist()
            assert summ["top_norms"][n].tolist() == norms[order, n].tolist()


@pytest.mark.slow  # two torchrun launches: ~40 s on an idle 2-core CPU
def test_resume_merges_parts_of_a_killed_distributed_run(runs, tmp_path: Path) -> None:
    """A distributed run killed after rank 1 listed its chunks in its part file: a resume
    (here with one process) takes them over instead of computing them again."""
    import shutil

    from solens.models.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(runs["two"], run)
    m = json.loads((run / MANIFEST).read_text())
    odd = [c for c in m["chunks"] if c["index"] % 2]
    ranges = [(c["start"], c["stop"]) for c in odd]
    save_json_atomic(part_file(run, 1), {
        "run_id": m["run_id"], "rank": 1, "chunks": odd,
        "skipped": [s for s in m["skipped"] if any(a <= s["index"] < b for a, b in ranges)]})
    save_json_atomic(part_file(run, 2), {"run_id": "another run", "rank": 2, "chunks": odd})
    for layer in (0, 1):  # the combined statistics were not written yet
        for f in (run / layer_dir(layer) / "summary").glob("*.npy"):
            f.unlink()
    m.update(chunks=[c for c in m["chunks"] if c["index"] % 2 == 0], complete=False,
             skipped=[s for s in m["skipped"] if not any(a <= s["index"] < b for a, b in ranges)])
    m["n_images"] = sum(c["rows"] for c in m["chunks"])
    m.pop("finished", None)
    save_json_atomic(run / MANIFEST, m)
    model = load_model(f"local-dir:{runs['model']}", text=False)
    done: list[int] = []
    spec = f"{runs['tmp']}/shards/train-{{000..002}}.tar"
    resumed = run_effects(model, spec, [0, 1], run, progress=False, on_chunk=done.append)
    assert done == [] and resumed.complete and not (run / PARTS).exists()
    assert _manifest(run) == _manifest(runs["two"])
    a, b = _shards(run), _shards(runs["two"])
    assert all(np.array_equal(a[k], b[k]) for k in b) and sorted(a) == sorted(b)


@pytest.mark.slow  # two torchrun launches: ~40 s on an idle 2-core CPU
def test_old_chunks_without_summaries_are_summarised_from_shards(runs, tmp_path: Path) -> None:
    import shutil

    from solens.store.distributed import SummaryWriter, write_summaries
    from solens.store.run import read_manifest

    run = tmp_path / "run"
    shutil.copytree(runs["one"], run)
    for f in (run / layer_dir(1) / "summary").iterdir():
        f.unlink()
    w = SummaryWriter(run, read_manifest(run), -1)
    write_summaries(w)
    for name in ("mean_s", "mean_norm", "rms_norm", "top_norms", "top_candidates", "top_rows"):
        assert np.array_equal(np.load(run / "layer-01/summary" / f"{name}.npy"),
                              np.load(runs["one"] / "layer-01/summary" / f"{name}.npy")), name


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 30),
    cuts=st.lists(st.integers(1, 29), max_size=6),
    k=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_combined_chunks_equal_one_chunk(rows, cuts, k, seed, ties) -> None:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((rows, 3, 2)).astype(np.float32)
    norms = rng.random((rows, 3)).astype(np.float32)
    if ties:
        norms = np.round(norms * 3).astype(np.float32) / 3  # many equal norms
    cand = np.sort(rng.choice(1000, rows, replace=False)).astype(np.int64)
    bounds = sorted({0, rows, *[c for c in cuts if c < rows]})
    parts = [chunk_summary(s[a:b], norms[a:b], cand[a:b], k)
             for a, b in itertools.pairwise(bounds)]
    whole = combine_summaries([chunk_summary(s, norms, cand, k)], k)
    got = combine_summaries(parts, k)
    assert np.array_equal(got["top_norms"], whole["top_norms"])
    assert np.array_equal(got["top_candidates"], whole["top_candidates"])
    np.testing.assert_allclose(got["mean_s"], s.astype(np.float64).mean(0), rtol=1e-12,
                               atol=1e-15)
    for n in range(3):
        ref = sorted(range(rows), key=lambda r: (-float(norms[r, n]), cand[r]))[:k]
        assert got["top_candidates"][n].tolist() == cand[ref].tolist()


def test_share_deals_every_chunk_once() -> None:
    pending = [0, 2, 3, 5, 8, 9, 11]
    shares = [Dist(rank=r, world=3).share(pending) for r in range(3)]
    assert sorted(functools.reduce(operator.iadd, shares, [])) == pending
    assert shares[0] == [0, 5, 11] and Dist().share(pending) == pending
    assert Dist(rank=6, world=8, local_rank=2).share(range(16)) == [6, 14]  # global rank


def test_chunk_files_named_like_shards() -> None:
    assert chunk_file(3) == "chunk-000003.npy"


def test_rank_refuses_a_run_of_other_arguments(tmp_path: Path) -> None:
    from solens.errors import RunMismatchError
    from solens.store.distributed import RankWriter
    from solens.store.run import read_manifest
    from tests.helpers import tiny_model

    model = tiny_model(dtype=torch.float32)
    run = run_effects(model, "synth:balanced:3:0:32", [2], tmp_path / "run", progress=False)
    identity = read_manifest(run.path).identity()
    w = RankWriter.join(run.path, identity, 1)
    assert w.has_static("anything") and w.rank == 1
    with pytest.raises(RunMismatchError, match=r"rank 1: .* same arguments"):
        RankWriter.join(run.path, {**identity, "layers": [1]}, 1)
    summary = load_summary(run.path, 2)  # a one-process run has its statistics too
    assert summary["n_images"] == 3 and summary["top_rows"].shape == (128, 3)
    (run.path / layer_dir(2) / "summary" / "summary.json").unlink()
    with pytest.raises(InputError, match="re-run `solens effects`"):
        load_summary(run.path, 2)


def _lock_pid(run: Path) -> int | None:
    text = (run / ".lock").read_text().strip()
    return json.loads(text)["pid"] if text else None


@pytest.mark.parametrize("damage", [False, True])
def test_other_ranks_share_rank0s_lock_and_their_chunks_keep_checksums(
    tmp_path: Path, damage: bool
) -> None:
    """Rank 1 joins while rank 0 holds the lock (not refused, record untouched, heartbeat
    kept); its chunk reaches the manifest with the shard lengths and sha256 of format 2,
    also when rank 0 was killed before merging, and a damaged shard of it is found."""
    from solens.errors import RunLockedError
    from solens.store.arrays import file_sha256
    from solens.store.distributed import RankWriter, SummaryWriter, open_writer
    from solens.store.run import RunWriter, read_manifest
    from tests.helpers import tiny_model

    model = tiny_model(dtype=torch.float32)
    out = tmp_path / "run"
    run = run_effects(model, "synth:balanced:6:0:32", [2], out, chunk_size=2, progress=False)
    identity, images = read_manifest(out).identity(), run.images_record.to_dict()
    names = list(run.manifest.arrays)
    chunk1 = {n: np.load(out / n / chunk_file(1)) for n in names}
    want = run.manifest.chunks[1].files
    (out / names[0] / chunk_file(1)).unlink()  # chunk 1 is to do again
    with open_writer(out, identity, images, None, Dist(0, 2)) as w0:
        assert isinstance(w0, SummaryWriter) and w0.pending() == [1]
        assert _lock_pid(out) == os.getpid()
        with pytest.raises(RunLockedError):  # another job is still refused
            RunWriter.open(out, identity, images)
        os.utime(out / ".lock", (1, 1))  # an old heartbeat
        with open_writer(out, identity, images, None, Dist(1, 2)) as w1:  # not refused
            assert isinstance(w1, RankWriter)
            w1.write_chunk(1, chunk1)
        assert (out / ".lock").stat().st_mtime > 1  # rank 1 kept the heartbeat going
        assert _lock_pid(out) == os.getpid()  # rank 1 left rank 0's record alone
        part = json.loads(part_file(out, 1).read_text())
        files = part["chunks"][0]["files"]
        for n in names:
            f = out / n / chunk_file(1)
            assert files[n] == {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
            assert files[n] == want[n].to_dict()
        # rank 0 is killed here: it never merges
    if damage:
        f = out / names[-1] / chunk_file(1)
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF  # same length: only the checksum finds it
        f.write_bytes(bytes(data))
    with SummaryWriter.open(out, identity, images) as w:
        assert not part_file(out, 1).exists()
        if damage:
            assert [r["index"] for r in w.repaired] == [1] and w.pending() == [1]
            return
        assert w.repaired == [] and w.pending() == []
        assert w.manifest.chunks[1].files == want
    assert Run.open(out).verify() == []
