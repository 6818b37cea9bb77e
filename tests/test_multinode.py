"""Multi-node ``torchrun -m solens effects``: two torchrun launchers on this host play two
nodes (gloo on CPU) against one process, a run folder the nodes do not share, a node that
dies and the resume after it; the backend/device choice of a rank (``nccl`` on
``cuda:LOCAL_RANK``) and the devices of the collectives' tensors without a GPU."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from solens.errors import InputError, SolensError
from solens.store.distributed import (
    PARTS,
    SHARED,
    Dist,
    Placement,
    env_seconds,
    mark_shared,
    part_file,
    placement,
    shared_problem,
)
from solens.store.run import MANIFEST
from tests.test_distributed import SRC, _effects, _manifest, _shards, effects_inputs


# --- backend and device of a rank (no GPU needed) --------------------------------------------
@pytest.mark.parametrize(
    ("device", "gpus", "local", "local_world", "backend", "on", "comm"),
    [
        ("cuda", 4, 1, 4, "nccl", "cuda:1", "cuda:1"),
        ("cuda", 8, 3, 4, "nccl", "cuda:3", "cuda:3"),  # fewer processes than GPUs
        ("auto", 2, 0, 2, "nccl", "cuda:0", "cuda:0"),
        ("auto", 0, 3, 4, "gloo", "cpu", "cpu"),
        ("cpu", 8, 2, 8, "gloo", "cpu", "cpu"),  # --device cpu on a GPU node: gloo
        ("cuda:1", 2, 0, 1, "nccl", "cuda:1", "cuda:1"),  # one process per node: GPU 1
        ("mps", 0, 0, 1, "gloo", "mps", "cpu"),
    ],
)
def test_placement(device, gpus, local, local_world, backend, on, comm) -> None:
    p = placement(device, gpus, local, local_world)
    assert p == Placement(backend, on) and p.comm_device == comm


@pytest.mark.parametrize(
    ("device", "gpus", "local", "local_world", "message"),
    [
        ("cuda", 0, 0, 2, "CUDA is not available"),
        ("cuda", 2, 2, 4, "LOCAL_RANK 2 has no GPU of its own: this node has 2; start at most 2"),
        ("cuda:1", 4, 0, 2, "2 processes per node: they would all use GPU 1; pass --device cuda"),
        ("cuda:5", 2, 0, 1, "this node has 2 GPUs"),
        ("cuda:x", 2, 0, 1, "expected cuda or cuda:INDEX"),
    ],
)
def test_placement_refuses(device, gpus, local, local_world, message) -> None:
    with pytest.raises(InputError, match=message):
        placement(device, gpus, local, local_world)


def test_env_seconds() -> None:
    assert env_seconds({}, "T", 3600.0) == 3600.0
    assert env_seconds({"T": " 42.5 "}, "T", 3600.0) == 42.5
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(InputError, match=f"T='{bad}': expected a positive number"):
            env_seconds({"T": bad}, "T", 1.0)


class _FakeGroup:
    """Records what ``Dist`` asks of torch.distributed and torch.cuda (no GPU, no peers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.up = False
        td = torch.distributed
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", self._record("set_device"))
        monkeypatch.setattr(td, "is_initialized", lambda: self.up)
        monkeypatch.setattr(td, "init_process_group", self._record("init", start=True))
        monkeypatch.setattr(td, "broadcast_object_list", self._record("broadcast"))
        monkeypatch.setattr(td, "all_gather_object", self._record("gather"))
        monkeypatch.setattr(td, "barrier", self._record("barrier"))

    def _record(self, name: str, start: bool = False) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))
            self.up = self.up or start

        return call


ENV = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
       "SOLENS_DIST_TIMEOUT_S": "42"}  # fmt: skip


def test_nccl_rank_binds_its_gpu_and_sends_cuda_tensors(monkeypatch) -> None:
    """Node 1's second process (global rank 3, LOCAL_RANK 1) of 2 nodes x 2: nccl on
    cuda:1 (its GPU bound at init, so barrier and object collectives use it), the
    timeout from SOLENS_DIST_TIMEOUT_S, the chunks dealt by the global rank."""
    g = _FakeGroup(monkeypatch, gpus=2)
    dist = Dist.from_env("cuda", ENV)
    assert dist == Dist(rank=3, world=4, local_rank=1, backend="nccl", device="cuda:1")
    assert not dist.is_main and dist.active and dist.comm_device == "cuda:1"
    gpu = torch.device("cuda:1")
    assert g.calls == [
        ("set_device", (gpu,), {}),
        ("init", ("nccl",), {"timeout": timedelta(seconds=42), "device_id": gpu}),
    ]
    dist.broadcast("x")
    assert g.calls[-1][0] == "broadcast" and g.calls[-1][2]["device"] == gpu
    assert dist.share(range(10)) == [3, 7]  # global rank 3 of 4, not LOCAL_RANK 1
    assert dist.gather("y") == [None] * 4 and g.calls[-1][0] == "gather"


def test_cpu_device_on_a_gpu_node_is_gloo_with_cpu_tensors(monkeypatch) -> None:
    g = _FakeGroup(monkeypatch, gpus=2)
    dist = Dist.from_env("cpu", {**ENV, "SOLENS_DIST_TIMEOUT_S": ""})
    assert (dist.backend, dist.device, dist.comm_device) == ("gloo", "cpu", "cpu")
    assert g.calls == [("init", ("gloo",), {"timeout": timedelta(seconds=3600)})]
    dist.broadcast("x")
    assert g.calls[-1][2]["device"] == torch.device("cpu")


def test_one_process_joins_no_group(monkeypatch) -> None:
    g = _FakeGroup(monkeypatch, gpus=2)
    dist = Dist.from_env("cuda", {})
    assert dist == Dist(device="cuda") and not dist.active and g.calls == []
    assert dist.broadcast(5) == 5 and dist.gather(5) == [5] and g.calls == []


def test_a_lost_peer_is_one_error_line(monkeypatch) -> None:
    _FakeGroup(monkeypatch, gpus=0)
    dist = Dist.from_env("cpu", {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})

    def closed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:1420.\nGLHF")

    monkeypatch.setattr(torch.distributed, "barrier", closed)
    with pytest.raises(SolensError) as e:
        dist.barrier()
    msg = str(e.value)
    assert "\n" not in msg and "Connection closed by peer" in msg and "GLHF" not in msg
    assert msg.startswith("another process of this distributed run stopped")
    assert "start the same command again to resume" in msg


def test_shared_problem_sees_rank0s_token(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    token = mark_shared(run)
    assert token.startswith(SHARED) and (run / token).is_file()
    assert token != mark_shared(run)  # a new name each time (no cached negative lookups)
    assert shared_problem(run, token, 1, wait_s=0.01) is None
    t0 = time.monotonic()
    problem = shared_problem(run, f"{SHARED}0000", 2, wait_s=0.3)  # another node's token
    assert problem is not None and problem.startswith("rank 2 on ")
    assert time.monotonic() - t0 >= 0.3  # it waited for a slow file system
    assert shared_problem(tmp_path / "missing", token, 1, wait_s=0.01) is not None


# --- two nodes on this host --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launcher(nodes: int, nproc: int, node: int, port: int, rdzv: str) -> list[str]:
    """The torchrun command line of ``node`` (c10d rendezvous: ranks by arrival; static:
    node 0 is ranks 0..nproc-1)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
           f"--nproc-per-node={nproc}"]  # fmt: skip
    if rdzv == "c10d":
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=solens"]
    else:
        cmd += [f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}"]
    return [*cmd, "-m", "solens", "effects"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", **extra}  # fmt: skip


def _start_nodes(args: list[str], nproc: int, rdzv: str, cwds: tuple[Path, Path] | None = None,
                 **env: str) -> list[subprocess.Popen]:  # fmt: skip
    port = _free_port()
    return [
        subprocess.Popen(
            [*_launcher(2, nproc, node, port, rdzv), *args],
            env=_env(**env),
            cwd=None if cwds is None else cwds[node],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: killed with its workers
        )
        for node in (0, 1)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_node(p)
            text, _ = p.communicate()
            pytest.fail(f"a launcher did not end within {timeout} s:\n{text[-3000:]}")
        out.append((p.returncode, text))
    return out


def _kill_node(p: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torchrun starts its workers in
    sessions of their own), as if its node failed."""
    tree, todo = [], [p.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    todo.append(int(d))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _assert_same_run(a: Path, b: Path) -> None:
    x, y = _shards(a), _shards(b)
    assert sorted(x) == sorted(y)
    for name in x:  # every shard, direction, chunk summary and combined statistic
        assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name
    assert _manifest(a) == _manifest(b)
    assert not (b / PARTS).exists() and not list(b.glob(f"{SHARED}*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("nodes")
    model, args = effects_inputs(tmp)
    _effects([*args, "--out", str(tmp / "one")], 1)
    return {"tmp": tmp, "model": model, "args": args, "one": tmp / "one"}


@pytest.mark.slow  # two torchrun launchers: ~15 s (2 x 1) and ~25 s (2 x 2) on 2 idle cores
@pytest.mark.parametrize(("nproc", "rdzv"), [(1, "c10d"), (2, "static")])
def test_two_nodes_equal_one_process_bitwise(data, nproc: int, rdzv: str) -> None:
    out = data["tmp"] / f"nodes-{nproc}"
    logs = _finish(_start_nodes([*data["args"], "--out", str(out)], nproc, rdzv))
    for rc, text in logs:
        assert rc == 0, text[-4000:]
    assert sum(t.count("22 images (1 skipped)") for _, t in logs) == 1  # global rank 0 only
    _assert_same_run(data["one"], out)
    m = json.loads((out / MANIFEST).read_text())
    assert m["sessions"][-1]["world_size"] == 2 * nproc and m["complete"]
    assert len(m["sessions"]) == 1


@pytest.mark.slow  # two torchrun launchers: ~15 s on 2 idle cores
def test_a_run_folder_the_nodes_do_not_share_is_refused(data) -> None:
    """Each node sees its own ``run`` (a relative --out from different working folders):
    every rank stops with one line saying the folder must be shared."""
    cwds = (data["tmp"] / "node-a", data["tmp"] / "node-b")
    for c in cwds:
        c.mkdir()
    procs = _start_nodes([*data["args"], "--out", "run"], 1, "static", cwds,
                         SOLENS_SHARED_WAIT_S="1")  # fmt: skip
    logs = _finish(procs)
    for rc, text in logs:
        assert rc != 0
        lines = [ln for ln in text.splitlines() if ln.startswith("solens: error:")]
        assert len(lines) == 1, text[-4000:]
        assert lines[0].startswith(
            "solens: error: the run folder run is not on a file system all processes share: "
            "rank 1 on "
        ), lines[0]
        assert lines[0].endswith(
            "put --out on a file system all nodes share (the same path on every node)"
        )
    a, b = (c / "run" for c in cwds)
    assert (a / MANIFEST).is_file() and not b.exists()  # node 0 (static: rank 0) made it
    assert not list(a.glob(f"{SHARED}*"))  # rank 0 removed its token


@pytest.mark.slow  # three launches of 2 nodes and one process: ~50 s on 2 idle cores
def test_a_dead_node_stops_the_other_and_the_run_resumes(data) -> None:
    """Node 1 dies (SIGKILL of its launcher and worker) after its first chunk: node 0
    stops with one error line well before the process group timeout instead of waiting;
    two nodes started again finish the run, taking over node 1's listed chunks, and the
    run equals a one-process run bitwise."""
    tmp = data["tmp"]
    args = ["--model", f"local-dir:{data['model']}", "--layers", "0", "1",
            "--images", "synth:balanced:600:0:32", "--chunk-size", "4", "--batch-size", "4",
            "--no-progress"]  # fmt: skip
    out = tmp / "killed"
    procs = _start_nodes([*args, "--out", str(out)], 1, "static", SOLENS_DIST_TIMEOUT_S="120")
    t0 = time.monotonic()
    while not part_file(out, 1).is_file():
        assert procs[1].poll() is None, procs[1].communicate()[0][-3000:]
        assert time.monotonic() - t0 < 300
        time.sleep(0.02)
    _kill_node(procs[1])
    t1 = time.monotonic()
    (rc, text), _ = _finish(procs, timeout=200)
    assert rc != 0 and time.monotonic() - t1 < 100  # not the 120 s timeout: the peer is gone
    lines = [ln for ln in text.splitlines() if ln.startswith("solens: error:")]
    assert lines and lines[0].startswith(
        "solens: error: another process of this distributed run stopped"
    ), text[-3000:]
    m = json.loads((out / MANIFEST).read_text())
    assert not m["complete"] and m["sessions"][0]["chunks"] == 150
    listed = json.loads(part_file(out, 1).read_text())["chunks"]
    assert listed and {c["index"] % 2 for c in listed} == {1}  # rank 1's share
    done = len(m["chunks"]) + len(listed)

    for rc, text in _finish(_start_nodes([*args, "--out", str(out)], 1, "c10d")):
        assert rc == 0, text[-4000:]
    _effects([*args, "--out", str(tmp / "killed-one")], 1)
    _assert_same_run(tmp / "killed-one", out)
    m = json.loads((out / MANIFEST).read_text())
    assert m["complete"] and len(m["sessions"]) == 2 and m["sessions"][0]["finished"] is None
    assert m["sessions"][1]["chunks"] == 150 - done  # node 1's listed chunks were kept
