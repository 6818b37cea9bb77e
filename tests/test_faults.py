"""Fault injection: killed writers, locks, full or unwritable disks, damaged and edited run
folders, changed, broken and huge images. Every case ends either in a run identical to an
uninterrupted one or in one ``solens: error:`` line with exit code 2 (never a traceback).

Tests run as root here, where ``chmod`` does not stop writes: in the normal suite an
unwritable folder is simulated by making the file-creating calls (``tempfile.mkstemp``,
``os.open`` of the lock) fail with ``EACCES``/``EROFS`` below it (as another user,
``chmod 0o555`` is used instead), and a full disk by a writer whose ``open`` returns a file
that fails with ``ENOSPC``. The slow ``test_a_real_full_disk_and_a_read_only_mount`` uses
the real thing where it may (root, ``unshare -m``): a tiny tmpfs and a read-only bind mount
in a private mount namespace.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solens.describe.stats import compute_stats
from solens.errors import InputError, RunLockedError, RunMismatchError, StorageError
from solens.store import Run, RunWriter, run_effects
from solens.store import arrays as store_arrays
from solens.store import run as store_run
from solens.store.protocol import MODEL_KEYS, Manifest
from tests.helpers import run_cli
from tests.store_helpers import image_folder, save_local_model, tiny_model
from tests.test_effects_cli import SLOW_CLI  # effects with 40 ms per image

REPO = Path(__file__).resolve().parents[1]
LAYERS = [1, 2]
KW = {"batch_size": 2, "chunk_size": 3, "progress": False, "workers": 1}

pytestmark = pytest.mark.usefixtures("one_thread")


# --- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """10 noise PNGs + a corrupt JPEG, a gray, an RGBA and a palette PNG: 14 candidates."""
    return image_folder(tmp_path_factory.mktemp("imgs") / "imgs", n=10)


@pytest.fixture(scope="module")
def reference(model, folder, tmp_path_factory) -> Run:
    """The uninterrupted run every resumed run must equal."""
    return run_effects(model, folder, LAYERS, tmp_path_factory.mktemp("ref") / "run", **KW)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> str:
    return save_local_model(tmp_path_factory.mktemp("model") / "tiny", seed=3)


def assert_same_run(a: Run, b: Run) -> None:
    """Same rows, skips, chunks and bit-identical arrays; no temporary files left."""
    assert a.complete and b.complete
    assert a.image_paths == b.image_paths and a.skipped == b.skipped
    assert [(c.index, c.rows, c.skipped) for c in a.manifest.chunks] == [
        (c.index, c.rows, c.skipped) for c in b.manifest.chunks
    ]
    for name in b.manifest.arrays:
        np.testing.assert_array_equal(np.asarray(a.array(name)), np.asarray(b.array(name)))
    for name in b.manifest.static:
        np.testing.assert_array_equal(a.static(name), b.static(name))
    assert a.verify() == [] and not list(a.path.rglob("*.tmp"))


def one_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("solens: error: "), err
    return lines[0].removeprefix("solens: error: ")


def effects_args(model: str, images: Path, out: Path, *extra: str) -> list[str]:
    return ["effects", "--model", model, "--images", str(images), "--out", str(out),
            "--layers", "1", "--device", "cpu", "--no-progress", "--batch-size", "2",
            "--chunk-size", "3", "--workers", "1", *extra]  # fmt: skip


class Killed(BaseException):
    """Stands for SIGKILL inside the process (a BaseException: nothing catches it)."""


# --- 1. kill at any point, then resume ---------------------------------------------------------
def _count_replaces(model, folder, out) -> int:
    n = 0
    real = os.replace

    def counting(a, b):
        nonlocal n
        n += 1
        real(a, b)

    os.replace = counting
    try:
        run_effects(model, folder, LAYERS, out, **KW)
    finally:
        os.replace = real
    return n


def test_killed_at_random_writes_then_resumed_equals_an_uninterrupted_run(
    model, folder, reference, tmp_path, monkeypatch
):
    """Five trials: the writer dies at a random atomic write, before its rename (leaving the
    temporary file, as SIGKILL would) or just after it (a shard the manifest does not list
    yet); a stray temp manifest and an unlisted truncated shard are added; the resumed run
    is bit-identical to the reference."""
    n_writes = _count_replaces(model, folder, tmp_path / "count")
    assert n_writes > 20  # 5 chunks x (5 shards + manifest) + directions + sessions
    rng = np.random.default_rng(20)
    real = os.replace
    for trial, at in enumerate(rng.choice(np.arange(1, n_writes), 5, replace=False)):
        out = tmp_path / f"t{trial}"
        after = bool(trial % 2)
        calls = 0

        def dying(a, b, at=at, after=after):
            nonlocal calls
            calls += 1
            if calls == at:
                if after:
                    real(a, b)
                else:  # SIGKILL leaves the temporary file: keep a copy the cleanup can't see
                    shutil.copy(a, Path(a).with_name(Path(a).name + "x.tmp"))
                raise Killed
            real(a, b)

        monkeypatch.setattr(os, "replace", dying)
        with pytest.raises(Killed):
            run_effects(model, folder, LAYERS, out, **KW)
        monkeypatch.setattr(os, "replace", real)
        (out / ".manifest.json.abcd1234.tmp").write_text("{")  # a half-written manifest
        if (out / "manifest.json").exists():
            listed = {c.index for c in Run.open(out).manifest.chunks}
            nxt = next((k for k in range(5) if k not in listed), None)
            if nxt is not None:  # None: killed while the streaming statistics were written
                shard = out / "layer-01" / "s" / f"chunk-{nxt:06d}.npy"
                shard.parent.mkdir(parents=True, exist_ok=True)
                shard.write_bytes(b"\x93NUMPY")  # an unlisted, truncated shard
        resumed = run_effects(model, folder, LAYERS, out, **KW)
        assert_same_run(resumed, reference)


CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
AT = int(os.environ["SOLENS_TEST_KILL_AT"])
real, n = os.replace, 0
def dying(a, b):
    global n
    n += 1
    if n == AT:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-write: the temp file stays
    real(a, b)
os.replace = dying
from solens.cli import main
main(sys.argv[1:])
"""


def _sigkill_child(args: list[str], at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"),
           "SOLENS_TEST_KILL_AT": str(at)}  # fmt: skip
    return subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow  # ~20 s on 2 shared cores: two fresh interpreters import torch + open_clip
def test_sigkill_mid_write_leaves_a_resumable_run_and_a_stale_lock(tmp_path, local_model, capsys):
    """A real SIGKILL between a shard's temporary file and its rename: the lock record of
    the dead process is taken over, the temp file removed, the run finished identically."""
    images = image_folder(tmp_path / "imgs", n=6)
    killed, full = tmp_path / "killed", tmp_path / "full"
    p = _sigkill_child(effects_args(local_model, images, killed), at=9)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert list(killed.rglob(".*.tmp"))  # the write it died in
    rec = json.loads((killed / ".lock").read_text())
    assert rec["host"] == platform.node() and rec["pid"] != os.getpid()
    partial = Run.open(killed)
    assert not partial.complete
    code, _, err = run_cli(effects_args(local_model, images, killed), capsys)
    assert code == 0, err
    assert (killed / ".lock").read_text() == ""  # released cleanly this time
    assert run_cli(effects_args(local_model, images, full), capsys)[0] == 0
    assert_same_run(Run.open(killed), Run.open(full))


def _listed(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow  # ~1-2 min: several fresh interpreters importing torch
def test_sigkill_at_random_times_several_trials(tmp_path, local_model, capsys):
    """Three trials, each killed with SIGKILL twice: once at a random moment while chunks
    are being computed and written, once at a random moment from its start (importing,
    taking over the stale lock, checking the listed chunks, computing); then finished.
    Every result equals the uninterrupted run."""
    images = image_folder(tmp_path / "imgs", n=30)  # 34 candidates, 12 chunks
    full = tmp_path / "full"
    assert run_cli(effects_args(local_model, images, full), capsys)[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    rng = np.random.default_rng()
    mid_run = 0
    for trial in range(3):
        out = tmp_path / f"t{trial}"
        for kill in ("while computing", "any time"):
            proc = subprocess.Popen(
                [sys.executable, "-c", SLOW_CLI, *effects_args(local_model, images, out)],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if kill == "while computing":
                deadline = time.monotonic() + 120
                while _listed(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(float(rng.uniform(0, 1.0)))
            else:
                time.sleep(float(rng.uniform(0.5, 6.0)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            if proc.returncode == -signal.SIGKILL and 0 < _listed(out) < 12:
                mid_run += 1
        code, _, err = run_cli(effects_args(local_model, images, out), capsys)
        assert code == 0, err
        assert_same_run(Run.open(out), Run.open(full))
    assert mid_run >= 2  # most kills landed while the run was half done


# --- 2. locks ----------------------------------------------------------------------------------
def _ident(n: int = 4) -> tuple[dict, dict]:
    ident = {
        "format_version": 2, "model": {"name": "fake", "d_embed": 3}, "weights_sha256": "0",
        "preprocess": "none", "layers": [0], "dataset": {"kind": "test", "n": n},
        "chunk_size": 2, "arrays": {"embeddings": {"tail": [3], "dtype": "float32"}},
    }  # fmt: skip
    return ident, {"root": None, "paths": [f"i{i}" for i in range(n)], "labels": None}


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path, folder, model, capsys):
    ident, images = _ident()
    with RunWriter.open(tmp_path / "r", ident, images):
        rec = json.loads((tmp_path / "r" / ".lock").read_text())
        assert rec["pid"] == os.getpid() and rec["host"] == platform.node()
        with pytest.raises(RunLockedError, match=rf"in use by solens process {os.getpid()} on "
                                                 rf"host {platform.node()}"):  # fmt: skip
            RunWriter.open(tmp_path / "r", ident, images)
    assert (tmp_path / "r" / ".lock").read_text() == ""
    RunWriter.open(tmp_path / "r", ident, images).close()
    # the command line: one line, exit 2, nothing written
    out = tmp_path / "cli"
    with RunWriter.open(out, *_ident()):
        code, _, err = run_cli(["effects", "--model", "solens-tiny", "--layers", "1",
                                "--images", str(folder), "--out", str(out), "--no-progress"],
                               capsys)  # fmt: skip
    assert "is in use by solens process" in one_line(code, err)


def test_stale_lock_records(tmp_path):
    ident, images = _ident()
    path = tmp_path / "r"
    RunWriter.open(path, ident, images).close()
    lock = path / ".lock"
    dead = {"pid": 2**22 + 17, "host": platform.node(), "started": "2026-01-01T00:00:00+00:00"}
    lock.write_text(json.dumps(dead))  # a writer on this host killed with -9
    with RunWriter.open(path, ident, images) as w:
        assert w.stale_lock == dead
    other = {**dead, "host": "elsewhere"}  # another host, recently active: in use
    lock.write_text(json.dumps(other))
    with pytest.raises(RunLockedError, match=r"host elsewhere .* last active \d+ s ago; if "
                                             r"that process is gone, delete .*\.lock"):
        RunWriter.open(path, ident, images)
    old = time.time() - store_run.LOCK_STALE_S - 5  # ... silent for longer than the limit
    os.utime(lock, (old, old))
    with RunWriter.open(path, ident, images) as w:
        assert w.stale_lock == other


# --- 3. full disk, unwritable folder -----------------------------------------------------------
def _fail_below(folder: Path, code: int):
    """``tempfile.mkstemp`` that fails with ``code`` for files below ``folder``."""
    real = tempfile.mkstemp

    def mkstemp(*a, **kw):
        if Path(kw.get("dir", "")).resolve().is_relative_to(folder.resolve()):
            raise OSError(code, os.strerror(code))
        return real(*a, **kw)

    return mkstemp


def test_full_disk_gives_one_line_and_the_run_resumes(
    tmp_path, local_model, capsys, monkeypatch
):
    images = image_folder(tmp_path / "imgs", n=6)
    out, full = tmp_path / "run", tmp_path / "full"
    real_open = open

    class Full:  # a file on a disk that fills up: a few bytes land, then ENOSPC
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:7])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r", *a, **kw):  # the writer's open: chunk 1's s shard fails
        f = real_open(path, mode, *a, **kw)
        p = Path(path)
        if "w" in mode and p.name.startswith(".chunk-000001.npy.") and p.parent.name == "s":
            return Full(f)
        return f

    monkeypatch.setattr(store_arrays, "open", full_open, raising=False)
    line = one_line(*run_cli(effects_args(local_model, images, out), capsys)[::2])
    assert "No space left on device [ENOSPC]" in line and "chunk-000001.npy" in line
    assert "re-run the same `solens effects` command to resume" in line
    monkeypatch.delattr(store_arrays, "open")
    part = Run.open(out)
    assert not part.complete and [c.index for c in part.manifest.chunks] == [0]
    assert not list(out.rglob("*.tmp"))
    # the manifest write fails: the chunk it would list is done again on resume
    real_replace = os.replace

    def replace(a, b):
        if Path(b).name == "manifest.json" and Run.open(out).manifest.chunks[-1].index == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    line = one_line(*run_cli(effects_args(local_model, images, out), capsys)[::2])
    assert "manifest.json: No space left on device" in line
    monkeypatch.setattr(os, "replace", real_replace)
    assert run_cli(effects_args(local_model, images, out), capsys)[0] == 0
    assert run_cli(effects_args(local_model, images, full), capsys)[0] == 0
    assert_same_run(Run.open(out), Run.open(full))


def test_unwritable_or_read_only_folder_gives_one_line(
    tmp_path, local_model, capsys, monkeypatch
):
    images = image_folder(tmp_path / "imgs", n=2, extras=False)
    parent = tmp_path / "ro"
    parent.mkdir()
    real_open = os.open

    def os_open(path, flags, *a, **kw):
        if Path(path).resolve().is_relative_to(parent.resolve()) and flags & os.O_CREAT:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *a, **kw)

    if os.geteuid() != 0:
        parent.chmod(0o555)
    else:  # root writes through chmod: make the calls that create files fail instead
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(tempfile, "mkstemp", _fail_below(parent, errno.EACCES))
    try:
        line = one_line(*run_cli(effects_args(local_model, images, parent / "run"), capsys)[::2])
    finally:
        parent.chmod(0o755)
        monkeypatch.undo()
    assert "cannot write" in line and "Permission denied [EACCES]" in line
    # a run on a file system that became read-only: describe / export say so in one line
    run = tmp_path / "run"
    assert run_cli(effects_args(local_model, images, run), capsys)[0] == 0
    monkeypatch.setattr(tempfile, "mkstemp", _fail_below(run, errno.EROFS))
    line = one_line(*run_cli(["describe", str(run), "--pool", "world", "--k", "1",
                              "--no-progress"], capsys)[::2])  # fmt: skip
    assert "cannot write" in line and "Read-only file system [EROFS]" in line
    monkeypatch.setattr(tempfile, "mkstemp", _fail_below(tmp_path, errno.EROFS))
    line = one_line(*run_cli(["export", str(run), "--layer", "1", "--out",
                              str(tmp_path / "e.npy"), "--no-progress"], capsys)[::2])
    assert "e.npy: Read-only file system [EROFS]" in line
    monkeypatch.undo()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    line = one_line(*run_cli(["export", str(run), "--layer", "1", "--out",
                              str(tmp_path / "e.npy"), "--no-progress"], capsys)[::2])
    assert "MiB free; free space or choose another --out" in line


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow  # ~30 s: four fresh interpreters
@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m)")
def test_a_real_full_disk_and_a_read_only_mount(tmp_path, local_model, capsys):
    """No simulation: in a private mount namespace, a 160 KiB tmpfs fills up during the
    run (one line, exit 2), is enlarged, and the same command finishes the run, which
    equals one computed elsewhere; a read-only bind mount refuses describe and effects in
    one line each."""
    images = image_folder(tmp_path / "imgs", n=10)
    ref, mnt, kept = tmp_path / "ref", tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    kept.mkdir()
    assert run_cli(effects_args(local_model, images, ref), capsys)[0] == 0
    cmd = " ".join(effects_args(local_model, images, mnt / "run"))
    solens = f"{sys.executable} -m solens.cli"
    script = f"""
set -u
mount -t tmpfs -o size=160k tmpfs {mnt} || exit 90
{solens} {cmd} 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.code
mount -o remount,size=20m {mnt}
{solens} {cmd} 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.code
cp -r {mnt}/run {kept}/run
mount --bind -o ro {ref} {mnt}
{solens} describe {mnt} --pool world --k 2 --no-progress 2> {tmp_path}/ro1.err
{solens} {" ".join(effects_args(local_model, images, mnt / "sub"))} 2> {tmp_path}/ro2.err
exit 0
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    first = (tmp_path / "first.err").read_text()
    line = one_line(int((tmp_path / "first.code").read_text()), first)
    assert "No space left on device [ENOSPC]" in line and "resume" in line
    assert (tmp_path / "second.code").read_text().strip() == "0"
    assert_same_run(Run.open(kept / "run"), Run.open(ref))
    for name in ("ro1.err", "ro2.err"):
        line = one_line(2, (tmp_path / name).read_text())
        assert "Read-only file system [EROFS]" in line, line


# --- 4. images: corrupt, truncated, empty, 16-bit, CMYK, palette, huge -------------------------
def _messy(root: Path) -> dict[str, str]:
    """Every kind of file; returns name -> "ok" or "skip"."""
    rng = np.random.default_rng(5)
    root.mkdir(parents=True)
    rgb = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "plain.png")
    Image.fromarray(rgb).save(root / "photo.jpg", quality=90)
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(root / "gray16.png")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png")
    Image.new("RGB", (40, 30), "blue").save(root / "big.png")  # above the lower limit only
    Image.new("RGB", (60, 40), "red").save(root / "huge.png")  # above both limits
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    whole = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    whole = (root / "plain.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return {"plain.png": "ok", "photo.jpg": "ok", "gray16.png": "ok", "cmyk.jpg": "ok",
            "palette.png": "ok", "big.png": "ok", "huge.png": "skip", "empty.png": "skip",
            "corrupt.jpg": "skip", "truncated.jpg": "skip", "truncated.png": "skip"}  # fmt: skip


def test_broken_and_exotic_images_are_converted_or_skipped_and_listed(
    model, tmp_path, monkeypatch
):
    want = _messy(tmp_path / "imgs")
    # Pillow's limits scaled down: 1,100 pixels warn, 2,200 raise (40x30 = 1,200; 60x40);
    # the model's 32x32 crops (1,024 pixels) stay below both
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (DecompressionBombWarning) would fail
        run = run_effects(model, tmp_path / "imgs", [1], tmp_path / "run", **KW)
    assert run.complete
    assert sorted(run.image_paths) == sorted(n for n, v in want.items() if v == "ok")
    reasons = {s["path"]: s["reason"] for s in run.skipped}
    assert sorted(reasons) == sorted(n for n, v in want.items() if v == "skip")
    assert reasons["huge.png"] == (
        "ImageTooLarge: image too large: 2,400 pixels, above the limit of 2,200 (2 x "
        "PIL.Image.MAX_IMAGE_PIXELS; raise that in Python to decode larger images)"
    )
    assert "truncated" in reasons["truncated.jpg"] + reasons["truncated.png"]
    assert all("\n" not in r and len(r) <= 300 for r in reasons.values())


@pytest.mark.slow  # decodes a 10000 x 10000 image (~1.3 GB peak) in a fresh interpreter
def test_a_10000_pixel_square_image_prints_no_pillow_warning(tmp_path, local_model):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("L", (10000, 10000), 128).save(root / "big.png")
    Image.new("L", (20000, 10000), 128).save(root / "bigger.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run([sys.executable, "-m", "solens.cli",
                        *effects_args(local_model, root, tmp_path / "run")],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "DecompressionBomb" not in p.stderr and "Warning" not in p.stderr
    assert "skipped bigger.png: ImageTooLarge: image too large: 200,000,000 pixels" in p.stderr
    assert Run.open(tmp_path / "run").image_paths == ["big.png"]


def test_undecodable_only_folder_is_an_error_not_a_complete_empty_run(model, tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "b.jpg").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"none of the 2 images could be decoded .* the run "
                                         r"is not complete"):  # fmt: skip
        run_effects(model, root, [1], tmp_path / "run", **KW)
    run = Run.open(tmp_path / "run")
    assert not run.complete and run.n_images == 0 and len(run.skipped) == 2
    line = one_line(*run_cli(["describe", str(tmp_path / "run"), "--pool", "world"],
                             capsys)[::2])  # fmt: skip
    assert "is incomplete (0 images so far)" in line


# --- 5. damaged and edited run folders ---------------------------------------------------------
def _copy(run: Run, dst: Path) -> Path:
    shutil.copytree(run.path, dst)
    return dst


def test_damaged_shards_fail_in_one_line_and_are_redone_on_resume(
    model, folder, reference, tmp_path, capsys
):
    for how in ("truncate", "flip", "delete"):
        path = _copy(reference, tmp_path / how)
        shard = path / "layer-02" / "s" / "chunk-000002.npy"
        if how == "truncate":
            shard.write_bytes(shard.read_bytes()[:300])
        elif how == "flip":  # same length, other bytes: only the checksum tells
            a = np.load(shard)
            a[0, 0, 0] += 1
            np.save(shard, a)
        else:
            shard.unlink()
        commands = [["export", str(path), "--layer", "2", "--out", str(tmp_path / "e.npy")]]
        if how != "flip":  # found on opening; a checksum when the chunks are read (stats)
            commands.append(["describe", str(path), "--pool", "world", "--k", "2"])
        else:
            with pytest.raises(InputError, match=rf"{shard} is damaged \(checksum"):
                compute_stats(Run.open(path), 2, k=2, save=False)
        for args in commands:
            line = one_line(*run_cli([*args, "--no-progress"], capsys)[::2])
            assert line.startswith(f"{shard} is damaged (") and "re-run `solens effects`" in line
        before = {c.index: c.files for c in reference.manifest.chunks}
        run = run_effects(model, folder, LAYERS, path, **KW)
        session = run.manifest.sessions[-1]
        assert [r["file"] for r in session["repaired"]] == ["layer-02/s/chunk-000002.npy"]
        assert session["chunks"] == 1  # only the damaged chunk was computed again
        assert_same_run(run, reference)
        assert {c.index: c.files for c in run.manifest.chunks} == before


def test_verify_size_skips_checksums(model, folder, reference, tmp_path):
    path = _copy(reference, tmp_path / "r")
    shard = path / "embeddings" / "chunk-000000.npy"
    a = np.load(shard)
    a[0, 0] += 1
    np.save(shard, a)
    with RunWriter.open(path, reference.manifest.identity(), reference.images_record,
                        verify="size") as w:  # fmt: skip
        assert w.repaired == []
    with RunWriter.open(path, reference.manifest.identity(), reference.images_record) as w:
        assert [r["problem"] for r in w.repaired] == [
            "checksum (sha256) differs from the one recorded"
        ]


def _edit(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_edited_or_incomplete_manifests_fail_in_one_line(reference, tmp_path, capsys):
    """Every top-level key removed, every chunk and model key removed, row counts edited:
    export works or fails in one line (exit 2), never with a traceback."""
    m = json.loads((reference.path / "manifest.json").read_text())
    edits = [(f"del {k}", lambda d, k=k: d.pop(k)) for k in m]
    edits += [(f"del chunks[1].{k}", lambda d, k=k: d["chunks"][1].pop(k)) for k in m["chunks"][1]]
    edits += [(f"del model.{k}", lambda d, k=k: d["model"].pop(k)) for k in m["model"]]
    edits += [
        ("rows+1", lambda d: d["chunks"][1].update(rows=d["chunks"][1]["rows"] + 1)),
        ("rows-1 and n_images-1", lambda d: (d["chunks"][1].update(rows=2),
                                             d.update(n_images=d["n_images"] - 1))),
        ("n_images+5", lambda d: d.update(n_images=d["n_images"] + 5)),
        ("bytes", lambda d: d["chunks"][0]["files"]["embeddings"].update(bytes=1)),
        ("stop", lambda d: d["chunks"][0].update(stop=99)),
        ("static shape", lambda d: d["static"]["layer-01/directions-exact"].update(shape=[1])),
    ]  # fmt: skip
    must_fail = {"del format", "del format_version", "del complete", "del static",
                 *(f"del {k}" for k in Manifest.REQUIRED),
                 *(f"del chunks[1].{k}" for k in ("index", "start", "stop", "rows")),
                 *(f"del model.{k}" for k in MODEL_KEYS), *(w for w, _ in edits[-6:])}
    assert run_cli(["export", str(reference.path), "--layer", "1", "--out",
                    str(tmp_path / "ref.npy"), "--no-progress"], capsys)[0] == 0
    want = np.load(tmp_path / "ref.npy")
    failed = set()
    for i, (what, edit) in enumerate(edits):
        path = _copy(reference, tmp_path / f"e{i}")
        _edit(path, edit)
        code, _, err = run_cli(["export", str(path), "--layer", "1", "--out",
                                str(tmp_path / f"e{i}.npy"), "--no-progress"], capsys)  # fmt: skip
        if code:
            line = one_line(code, err)
            assert str(path) in line, (what, line)
            failed.add(what)
        else:  # a key export does not need: the export is still right
            np.testing.assert_array_equal(np.load(tmp_path / f"e{i}.npy"), want)
    assert must_fail <= failed, must_fail - failed
    path = _copy(reference, tmp_path / "rows")
    _edit(path, lambda d: d["chunks"][1].update(rows=2))
    line = one_line(*run_cli(["describe", str(path), "--pool", "world"], capsys)[::2])
    assert line == (f"{path / 'manifest.json'} is a malformed solens run manifest (ValueError: "
                    "chunk 1 lists 2 rows, but its 3 candidates minus 0 skipped are 3)")


def test_export_out_is_a_folder(reference, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    line = one_line(*run_cli(["export", str(reference.path), "--layer", "1", "--out",
                              str(tmp_path / "out"), "--no-progress"], capsys)[::2])  # fmt: skip
    assert line == (f"--out {tmp_path / 'out'} is a folder; give a file name, e.g. "
                    f"{tmp_path / 'out' / 'layer-01.npy'}")
    assert os.listdir(tmp_path / "out") == []


def test_stray_temp_files_are_removed_on_resume_and_on_creation(model, folder, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "images.json").write_text("{}")  # killed while being created
    (out / ".manifest.json.abcd1234.tmp").write_text("{")
    run_effects(model, folder, [1], out, **KW)
    assert not list(out.rglob("*.tmp"))
    (out / ".manifest.json.efgh5678.tmp").write_text("{")
    (out / "layer-01" / "s" / ".chunk-000001.npy.ijkl9012.tmp").write_bytes(b"x")
    run_effects(model, folder, [1], out, **KW)
    assert not list(out.rglob("*.tmp"))


# --- 6. changed images: by content, named, unchanged chunks kept -------------------------------
def test_changed_images_are_named_and_only_their_chunks_redone(model, tmp_path, capsys):
    root = image_folder(tmp_path / "imgs", n=10)
    out = tmp_path / "run"
    first = run_effects(model, root, [1], out, **KW)
    files0 = {c.index: c.files for c in first.manifest.chunks}
    # a new mtime, same bytes: nothing to do
    for p in root.rglob("*.png"):
        os.utime(p, (time.time() + 100, time.time() + 100))
    again = run_effects(model, root, [1], out, **KW)
    assert again.manifest.sessions[-1]["chunks"] == 0 and again.run_id == first.run_id
    assert "changed" not in again.manifest.sessions[-1]
    # the broken image fixed, another one edited
    broken = first.skipped[0]["path"]
    Image.new("RGB", (20, 20), "green").save(root / broken, format="JPEG")
    edited = first.image_paths[-1]
    Image.new("RGB", (20, 20), "white").save(root / edited)
    with pytest.raises(InputError, match=rf"2 images in .* differ from those of run {out}: "):
        Run.open(out).images()
    changed = sorted([broken, edited])
    cand = {p: i for i, p in enumerate(first.images_record.paths)}
    redo = sorted({cand[p] // 3 for p in changed})
    run = run_effects(model, root, [1], out, **KW)
    assert sorted(run.manifest.sessions[-1]["changed"]) == changed
    assert run.manifest.sessions[-1]["chunks"] == len(redo)
    assert run.run_id != first.run_id and run.skipped == []
    for c in run.manifest.chunks:  # the other chunks' shards were not rewritten
        assert (c.files == files0[c.index]) == (c.index not in redo)
    fresh = run_effects(model, root, [1], tmp_path / "fresh", **KW)
    assert_same_run(run, fresh)
    assert run.images().ids == fresh.images_record.paths  # verified by content
    # an added image is a different dataset, named
    Image.new("RGB", (8, 8)).save(root / "cat" / "new.png")
    with pytest.raises(RunMismatchError, match=r"dataset: .* 1 new \(cat/new\.png\)"):
        run_effects(model, root, [1], out, **KW)


def test_changed_images_on_the_command_line(tmp_path, local_model, capsys):
    images = image_folder(tmp_path / "imgs", n=4)
    out = tmp_path / "run"
    assert run_cli(effects_args(local_model, images, out), capsys)[0] == 0
    Image.new("RGB", (9, 9), "white").save(images / "cat" / "img001.png")
    code, _, err = run_cli(effects_args(local_model, images, out), capsys)
    assert code == 0, err
    assert "recomputed the chunks of 1 changed images: cat/img001.png" in err
    (out / "layer-01" / "norms" / "chunk-000000.npy").write_bytes(b"")
    code, _, err = run_cli(effects_args(local_model, images, out), capsys)
    assert code == 0, err
    assert "recomputed chunk 0: layer-01/norms/chunk-000000.npy was damaged (0 bytes" in err


# --- 7. describe / show on partial runs, --terms, --k ------------------------------------------
def _partial(model, folder, path: Path) -> Run:
    def stop(k):
        if k == 2:
            raise Killed

    with pytest.raises(Killed):
        run_effects(model, folder, LAYERS, path, on_chunk=stop, **KW)
    return Run.open(path)


def test_describe_allow_partial_and_show_agree(local_model, folder, tmp_path, capsys):
    from solens.models.loading import load_model

    part = _partial(load_model(local_model), folder, tmp_path / "part")
    n = part.n_images
    assert not part.complete and n == 8
    line = one_line(*run_cli(["show", str(part.path), "1", "0"], capsys)[::2])
    assert f"run `solens describe {part.path} --allow-partial`" in line
    assert "(the run is incomplete: 8 images so far)" in line
    line = one_line(*run_cli(["describe", str(part.path), "--pool", "world"], capsys)[::2])
    assert "incomplete (8 images so far)" in line
    code, out, err = run_cli(["describe", str(part.path), "--pool", "world", "--k", "3",
                              "--layers", "1", "--allow-partial", "--no-progress"], capsys)
    assert code == 0, err
    doc = json.loads((part.path / "descriptions" / "world-layer-01.json").read_text())
    stats = json.loads((part.path / "layer-01" / "stats" / "stats.json").read_text())
    assert doc["n_images"] == stats["n_images"] == n and doc["k"] == stats["k"] == 3
    code, out, err = run_cli(["show", str(part.path), "1", "5", "--images", "3"], capsys)
    assert code == 0, err
    tops = doc["neurons"][5]["top_images"]
    paths = Run.open(part.path).image_paths
    assert "(k=3)" in out and [paths[i] in out for i in tops] == [True] * 3
    assert doc["neurons"][5]["terms"][0]["text"] in out


def test_terms_and_k_are_checked_before_any_work(reference, tmp_path, capsys, monkeypatch):
    from solens.describe import describe as describe_mod

    def no(*a, **kw):
        raise AssertionError("the pool was embedded before the check")

    monkeypatch.setattr(describe_mod, "embed_pool", no)
    monkeypatch.setattr(describe_mod.Run, "load_model", no)
    d, n = int(reference.model["d_embed"]), reference.n_images
    line = one_line(*run_cli(["describe", str(reference.path), "--pool", "world",
                              "--terms", str(d + 1)], capsys)[::2])  # fmt: skip
    assert line.startswith(f"--terms {d + 1} is more than the run's embedding dimension ({d})")
    line = one_line(*run_cli(["describe", str(reference.path), "--pool", "world",
                              "--k", str(n + 1)], capsys)[::2])  # fmt: skip
    assert line == f"--k {n + 1} is more than the run's {n} images: give --k {n} or less " \
                   f"(Python: k={n})"
    assert not (reference.path / "descriptions").exists()


# --- 8. older run folders ----------------------------------------------------------------------
def test_a_format_1_run_reads_is_checked_and_is_not_extended(tmp_path):
    from tests.store_helpers import write_v1_run

    v1 = write_v1_run(tmp_path / "run", tmp_path / "imgs")
    run = Run.open(tmp_path / "run")
    assert run.manifest.format_version == 1 and run.verify() == []
    assert run.images().ids == v1["images"]["paths"]  # paths, sizes and mtimes
    ident = {**run.manifest.identity(), "format_version": 2}
    with pytest.raises(RunMismatchError, match=r"is a run of format version 1 \(solens 0\.1\.0\);"
                                               r" this solens writes version 2 and cannot add "
                                               r"to it \(it still reads it\)"):  # fmt: skip
        RunWriter.open(tmp_path / "run", ident, v1["images"])
    shard = tmp_path / "run" / "layer-01" / "s" / "chunk-000001.npy"
    shard.write_bytes(shard.read_bytes()[:-4])  # no recorded length: the header tells
    with pytest.raises(InputError, match=r"chunk-000001\.npy is damaged \(truncated: \d+ bytes"):
        Run.open(tmp_path / "run")


def test_storage_error_is_an_os_error_and_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkstemp", _fail_below(tmp_path, errno.ENOSPC))
    with pytest.raises(StorageError) as e:
        store_arrays.save_json_atomic(tmp_path / "x.json", {})
    assert isinstance(e.value, OSError)
    assert str(e.value) == f"cannot write {tmp_path / 'x.json'}: No space left on device [ENOSPC]"
