"""``solens effects`` / ``solens export`` end to end on a tiny local-dir model: messy image
folders, one-line errors, a real ``kill -9`` and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from solens.commands._args import expand_multi
from solens.lens.second_order import second_order
from solens.store import Run
from solens.store import arrays as store_arrays
from tests.helpers import run_cli
from tests.store_helpers import image_folder, save_local_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> str:
    return save_local_model(tmp_path_factory.mktemp("model") / "tiny", seed=3)


def effects_args(model: str, images: Path, out: Path, *extra: str) -> list[str]:
    return ["effects", "--model", model, "--images", str(images), "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]  # fmt: skip


def test_expand_multi():
    argv = ["effects", "--layers", "8", "9", "10", "--images", "d", "--neurons", "1:4", "7,8"]
    assert expand_multi(argv) == [
        "effects", "--layers", "8", "--layers", "9", "--layers", "10", "--images", "d",
        "--neurons", "1:4", "--neurons", "7,8",
    ]  # fmt: skip
    assert expand_multi(["describe", "--layers", "9", "runs/b32"]) == [
        "describe", "--layers", "9", "runs/b32",
    ]  # fmt: skip


def test_effects_on_messy_folder_then_export(tmp_path, local_model, capsys):
    from solens.models.loading import load_model

    images = image_folder(tmp_path / "imgs", n=6)  # + corrupt, gray, rgba, palette, .txt
    out = tmp_path / "run"
    args = effects_args(local_model, images, out, "--layers", "1", "2", "--batch-size", "3",
                        "--chunk-size", "4")  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "9 images (1 skipped)" in stdout
    run = Run.open(out)
    m = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in m["skipped"]] == ["cat/broken.JPG"]
    assert "broken.JPG" in m["skipped"][0]["reason"] or m["skipped"][0]["reason"]
    assert m["complete"] and m["layers"] == [1, 2] and m["model"]["name"] == local_model
    assert m["timings"]["images_per_s"] > 0 and m["sessions"][0]["device"] == "cpu"
    assert {"dog/gray.png", "dog/rgba.PNG", "cat/palette.png"} <= set(run.image_paths)
    assert run.labels == [p.split("/")[0] for p in run.image_paths]
    assert run.classes == ["cat", "dog"]

    # export == second_order on the same images (both conventions, neuron subset)
    model = load_model(local_model)
    pil = [Image.open(images / p).convert("RGB") for p in run.image_paths]
    x = torch.stack([model.preprocess(im) for im in pil])
    for conv, sel in (("exact", None), ("official", ["3", "0:2"])):
        f = tmp_path / f"{conv}.npy"
        extra = ["--neurons", *sel] if sel else []
        export = ["export", str(out), "--layer", "2", "--out", str(f), "--convention", conv]
        code, stdout, err = run_cli([*export, "--no-progress", *extra], capsys)
        assert code == 0, err
        ref = second_order(model, x, 2, convention=conv).numpy()
        if sel:
            ref = ref[:, [3, 0, 1]]
        got = np.load(f)
        assert got.shape == ref.shape == (9, 128 if not sel else 3, 16)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())

    # re-running the finished command is a no-op that succeeds
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert Run.open(out).n_images == 9


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solens: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_cli_errors_are_one_line(tmp_path, local_model, capsys):
    images = image_folder(tmp_path / "imgs", n=2, extras=False)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    assert run_cli(effects_args(local_model, images, out, "--layers", "1"), capsys)[0] == 0
    cases = [
        (effects_args("ViT-Nope-32", images, tmp_path / "r1", "--layers", "1"), "unknown model"),
        (effects_args(local_model, images, tmp_path / "r2", "--layers", "3"),
         "valid layers are 0..2"),
        (effects_args(local_model, tmp_path / "missing", tmp_path / "r3", "--layers", "1"),
         "does not exist"),
        (effects_args(local_model, tmp_path / "empty", tmp_path / "r4", "--layers", "1"),
         "no images"),
        (effects_args(local_model, images, out, "--layers", "0", "1"), "different run"),
        (effects_args(local_model, images, out, "--layers", "x"), "not an integer"),
        (effects_args(local_model, "synth:nosuchsplit:4", out, "--layers", "1"), "split"),
        (["effects", "--model", local_model, "--layers", "1"], "--images"),
        (["export", str(tmp_path / "nope"), "--layer", "1", "--out", "x.npy"], "does not exist"),
        (["export", str(out), "--layer", "2", "--out", "x.npy"], "not in run"),
        (["export", str(out), "--layer", "1", "--out", "x.npy", "--neurons", "999"],
         "out of range"),
        (["export", str(out), "--layer", "1", "--out", "x.npy", "--convention", "x"], "convention"),
    ]  # fmt: skip
    for args, needle in cases:
        line = _one_line_error(*run_cli(args, capsys)[::2])
        assert needle in line, (args, line)
    assert not (tmp_path / "x.npy").exists()


def test_cli_error_in_a_subprocess(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "solens.cli", "effects", "--model", "ViT-B-32", "--layers", "9",
         "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip
    line = _one_line_error(p.returncode, p.stderr)
    assert "does not exist" in line


SLOW_CLI = """
import sys, time
import torch
torch.set_num_threads(1)
from solens.store import images
_load = images.FolderImages.load
def slow_load(self, index):
    time.sleep(0.04)
    return _load(self, index)
images.FolderImages.load = slow_load
from solens.cli import main
main(sys.argv[1:])
"""


def _chunks_listed(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow  # ~20 s on 2 shared cores (a fresh interpreter imports torch + open_clip)
def test_kill_9_then_resume_gives_identical_arrays(tmp_path, local_model, capsys, monkeypatch):
    """A real ``kill -9`` of ``solens effects`` mid-run; the re-run finishes the same run."""
    monkeypatch.setattr(store_arrays, "FSYNC", True)
    images = image_folder(tmp_path / "imgs", n=40)  # 44 candidates, 1 corrupt, 15 chunks
    opts = ["--layers", "0", "2", "--batch-size", "2", "--chunk-size", "3", "--workers", "1"]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *effects_args(local_model, images, killed, *opts)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _chunks_listed(killed) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(np.random.default_rng().uniform(0, 0.2)))  # land anywhere in a chunk
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = Run.open(killed)
    assert not partial.complete and 3 <= len(partial.manifest.chunks) < 15
    code, _, err = run_cli(effects_args(local_model, images, killed, *opts), capsys)
    assert code == 0, err
    full = tmp_path / "full"
    code, _, err = run_cli(effects_args(local_model, images, full, *opts), capsys)
    assert code == 0, err
    a, b = Run.open(killed), Run.open(full)
    assert a.complete and a.n_images == b.n_images == 43
    assert a.image_paths == b.image_paths and a.skipped == b.skipped
    assert [c.rows for c in a.manifest.chunks] == [c.rows for c in b.manifest.chunks]
    for name in b.manifest.arrays:
        np.testing.assert_array_equal(np.asarray(a.array(name)), np.asarray(b.array(name)))
    for conv in ("exact", "official"):
        np.testing.assert_array_equal(a.layer(2).directions(conv), b.layer(2).directions(conv))
    assert not list(killed.rglob("*.tmp"))
