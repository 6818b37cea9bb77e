"""Benchmark: the performance table (docs/performance.md).

For ViT-B-32 and ViT-L-14 shapes with random weights, per source layer and batch size:

- ``forward_s``: a plain ``encode_image`` forward of the batch;
- ``trace_s``: the traced forward that the lens needs (attention patterns, LN scales);
- ``effects_s``: a whole layer's effects as ``solens effects`` computes them per batch:
  traced forward, coefficients ``s`` [B, N, P], exact norms [B, N] from the Gram
  matrices, the official offsets, the copy to host memory and the streaming statistics
  (sums and top-k per neuron, ``solens.store.distributed.chunk_summary``);
- ``api_first_s`` / ``api_second_s``: ``solens.second_order(model, x, layer)`` called twice
  (the first call computes the directions ``u``, the second reuses them);
- ``u_read_s``: one pass over the cached ``u`` [N, P, d] (``u.sum()``): the second call
  must read all of ``u`` to return [B, N, d], so ``(trace_s + u_read_s) / trace_s``
  (``api_floor_over_trace``) is the least its ratio to a traced forward can be;
- the FLOPs of the plain forward and of the lens on top of it (torch's FLOP counter), the
  analytic FLOP and byte floor of the factorised computation (``lens_flops``,
  ``floor_bytes``) and the achieved fraction of the machine's measured GEMM rate and
  memory bandwidth;
- peak memory (RSS; on CUDA also the allocator's peak).

The timings of a row run interleaved, one call of each per round. Times are the best
round of each; the ratios (``effects_over_forward``, ``api_second_over_trace``, the
floor) are medians over rounds of the ratio within a round (``paired_ratio``), which a
shared machine's slow spells disturb much less than a ratio of two best times (kept as
``*_best``).

Each (shape, layer) runs in its own process so that its peak memory is its own. With a
CUDA device, ``--precision`` also runs the bf16 and fp16 paths and checks them against
fp32 (relative error of the effects and norms). ``--load`` measures the RSS of
``load_model`` with and without the text tower. Writes
``benchmarks/results/performance.json`` and prints a table.

    python benchmarks/performance.py                        # the table of docs/performance.md
    python benchmarks/performance.py --device cuda --precision
    python benchmarks/performance.py --quick                # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "performance.json"
MIN_S = 8.0
"""Timings repeat in rounds until the rounds add up to this many seconds (best run of each
kind reported)."""
CONFIGS = {  # shape -> {source layer: batch sizes} of the default table (L-14 kept small)
    "ViT-B-32": {9: [1, 8, 32], 0: [1, 8, 32]},
    "ViT-L-14": {22: [1, 2], 12: [1]},
}


# --- analytic cost -----------------------------------------------------------------------------
def lens_flops(n_layers: int, n_heads: int, d_model: int, d_mlp: int, d_embed: int,
               n_tokens: int, layer: int) -> int:
    """FLOPs per image of the factorised lens on top of the traced forward, source block
    ``layer``: coefficients ``s = A/sigma @ post`` (2 P T N), norms ``s^T G s``
    (N (2 P^2 + 2 P)) and the official offset (per later block two [D, D] maps, then
    [D, d]): P = (L - layer - 1) H later heads, T tokens, N neurons."""
    P = (n_layers - layer - 1) * n_heads
    coeff = 2 * P * n_tokens * d_mlp
    norm = d_mlp * (2 * P * P + 2 * P)
    offset = (n_layers - layer - 1) * 4 * d_model * d_model + 2 * d_model * d_embed
    return coeff + norm + offset


def floor_bytes(n_layers: int, n_heads: int, d_model: int, d_mlp: int, d_embed: int,
                n_tokens: int, layer: int, batch: int, weight_bytes: int,
                itemsize: int = 4) -> int:
    """Bytes a batch must move at least: the weights read once, per image the stored
    arrays written (``s`` [N, P], norms [N], offset and embedding [d], 1/sigma) and the
    source block's activations [T, N] read once."""
    P = (n_layers - layer - 1) * n_heads
    per_image = itemsize * (d_mlp * P + d_mlp + 2 * d_embed + 1 + n_tokens * d_mlp)
    return weight_bytes + batch * per_image


def floor_seconds(flops: float, nbytes: float, flop_rate: float, byte_rate: float) -> float:
    """Roofline floor: the larger of compute time at ``flop_rate`` and transfer time at
    ``byte_rate``."""
    return max(flops / flop_rate, nbytes / byte_rate)


# --- machine -----------------------------------------------------------------------------------
def machine_rates(device: str, dtype: str = "float32") -> dict[str, float]:
    """Measured GEMM rate (FLOP/s, best of 20 2048^2 matmuls) and memory bandwidth
    (bytes/s, best of 10 copies of 256 MiB, read + write) of ``device``."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(2048, 2048, device=device, dtype=dt)
    b = torch.randn(2048, 2048, device=device, dtype=dt)
    t = _timed(lambda: a @ b, device, 20)
    x = torch.empty(64 * 2**20, device=device)
    y = torch.empty_like(x)
    c = _timed(lambda: y.copy_(x), device, 10)
    return {"gemm_flops": 2 * 2048**3 / t, "copy_bytes_per_s": 2 * x.numel() * 4 / c}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, n: int) -> float:
    """Best of ``n`` timings after one untimed call."""
    return _interleaved([fn], device, n, 0.0, warm=True)[0]


def _interleaved(fns: list[Callable[[], Any]], device: str, n: int, min_s: float,
                 warm: bool = False, rounds_out: list[list[float]] | None = None
                 ) -> list[float]:
    """Best time of each of ``fns``, run in rounds (one call of each per round) so that
    they see the same load: at least ``n`` rounds, more until the rounds add up to
    ``min_s`` seconds (at most 50); ``warm``: one untimed round first. On a shared machine
    the least disturbed run is the closest to the cost itself. ``rounds_out`` receives
    each round's times (for ratios of calls that ran side by side: ``paired_ratio``)."""
    if warm:
        for fn in fns:
            fn()
        _sync(device)
    best = [float("inf")] * len(fns)
    total, rounds = 0.0, 0
    times: list[float] = []
    while rounds < n or (total < min_s and rounds < 50):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            dt = time.perf_counter() - t0
            best[j] = min(best[j], dt)
            total += dt
            times.append(dt)
        if rounds_out is not None:
            rounds_out.append(times)
        times = []
        rounds += 1
    return best


def paired_ratio(rounds: list[list[float]], a: int, b: int) -> float:
    """Median over rounds of ``time[a] / time[b]``: the two calls of a round ran next to
    each other, so a slow spell of a shared machine (other jobs, CPU steal) affects both;
    the ratio of two separate best times can pair a lucky window with an unlucky one."""
    return statistics.median(r[a] / r[b] for r in rounds)


def _flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn`` by torch's counter, with small batches' products kept in torch
    (their numpy streaming path, ``STREAM_MAX_BATCH``, does the same arithmetic unseen)."""
    import importlib

    from torch.utils.flop_counter import FlopCounterMode

    so = importlib.import_module("solens.lens.second_order")  # the module, not the function
    saved, so.STREAM_MAX_BATCH = so.STREAM_MAX_BATCH, 0
    try:
        with FlopCounterMode(display=False) as fc:
            fn()
    finally:
        so.STREAM_MAX_BATCH = saved
    return int(fc.get_total_flops())


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- measurements ------------------------------------------------------------------------------
def layer_step(model: Any, layer: int, gram: Any) -> Callable[[Any], Any]:
    """What ``solens effects`` does per batch for one layer: traced forward, coefficients,
    norms, copy to host, streaming statistics."""
    import numpy as np
    import torch

    from solens.lens.second_order import coefficients, norms, trace_names
    from solens.store.distributed import chunk_summary

    names = trace_names([layer], model.info.n_layers)

    @torch.no_grad()
    def step(x: Any) -> Any:
        tr = model.trace(x, names)
        c = coefficients(model, tr, layer)
        nr = norms(c, gram.to(c.s))
        s = c.s.to("cpu", torch.float32).numpy()
        n = nr.to("cpu", torch.float32).numpy()
        c.offset.to("cpu", torch.float32)
        tr.embedding.to("cpu", torch.float32)
        return chunk_summary(s, n, np.arange(len(s), dtype=np.int64))

    return step


def measure(model: Any, layer: int, batches: list[int], device: str, repeats: int,
            rates: dict[str, float], min_s: float = MIN_S) -> list[dict[str, Any]]:
    """One row per batch size (module doc) for ``model`` and source ``layer``; each timing
    is the best of ``repeats`` runs or more, until they add up to ``min_s`` seconds."""
    import torch

    import solens
    from solens.lens.second_order import (
        cached_directions,
        clear_directions_cache,
        directions,
        gram,
        trace_names,
    )

    i = model.info
    names = trace_names([layer], i.n_layers)
    t0 = time.perf_counter()
    G = gram(directions(model, layer).float())
    _sync(device)
    directions_s = time.perf_counter() - t0
    u_bytes = i.d_mlp * (i.n_layers - layer - 1) * i.n_heads * i.d_embed * G.element_size()
    step = layer_step(model, layer, G)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.visual.parameters())
    rows = []
    flops1: dict[str, int] = {}
    for B in batches:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        x = torch.randn(B, 3, i.image_size, i.image_size, generator=torch.Generator()
                        .manual_seed(B)).to(device, model.dtype)  # fmt: skip
        step(x)  # warm-up
        model.encode_image(x)
        clear_directions_cache()
        t0 = time.perf_counter()
        solens.second_order(model, x, layer)
        _sync(device)
        api_first = time.perf_counter() - t0
        u = cached_directions(model, layer)  # what the API's second call reads
        rounds: list[list[float]] = []
        fwd, trace, eff, api_second, u_read = _interleaved(
            [lambda x=x: model.encode_image(x), lambda x=x: model.trace(x, names),
             lambda x=x: step(x), lambda x=x: solens.second_order(model, x, layer),
             lambda u=u: u.sum()],
            device, repeats, min_s, rounds_out=rounds)  # fmt: skip
        del u
        clear_directions_cache()
        if not flops1:  # FLOPs are linear in the batch: counted once, on one image
            x1 = x[:1]
            flops1.update(fwd=_flops(lambda x1=x1: model.encode_image(x1)),
                          eff=_flops(lambda x1=x1: step(x1)),
                          trace=_flops(lambda x1=x1: model.trace(x1, names)))
        f_fwd, f_eff, f_trace = (flops1[k] * B for k in ("fwd", "eff", "trace"))
        shape = (i.n_layers, i.n_heads, i.d_model, i.d_mlp, i.d_embed, i.n_tokens, layer)
        analytic = lens_flops(*shape) * B
        nbytes = floor_bytes(*shape, B, weight_bytes)
        floor = floor_seconds(f_fwd + analytic, nbytes, rates["gemm_flops"],
                              rates["copy_bytes_per_s"])
        row = {
            "model": i.name, "layer": layer, "batch": B, "device": device,
            "dtype": str(model.dtype).removeprefix("torch."),
            "forward_s": fwd, "trace_s": trace, "effects_s": eff,
            "api_first_s": api_first, "api_second_s": api_second,
            "effects_images_per_s": B / eff, "forward_images_per_s": B / fwd,
            "effects_over_forward": paired_ratio(rounds, 2, 0),
            "api_second_over_trace": paired_ratio(rounds, 3, 1),
            "api_second_over_forward": paired_ratio(rounds, 3, 0),
            "effects_over_forward_best": eff / fwd,
            "api_second_over_trace_best": api_second / trace,
            "rounds": len(rounds),
            "u_bytes": u_bytes, "u_read_s": u_read,
            "api_floor_over_trace": statistics.median((r[1] + r[4]) / r[1] for r in rounds),
            "directions_s": directions_s,
            "gflop_forward_per_image": f_fwd / B / 1e9,
            "gflop_lens_per_image_counted": (f_eff - f_trace) / B / 1e9,
            "gflop_lens_per_image_analytic": analytic / B / 1e9,
            "floor_bytes": nbytes, "floor_s": floor, "achieved_fraction": floor / eff,
            "forward_achieved_gflops": f_fwd / fwd / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if device.startswith("cuda"):
            row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
    return rows


def precision_check(model: Any, x: Any, layer: int, dtype: str) -> dict[str, float]:
    """Effects of ``layer`` with the model in ``dtype`` (bfloat16 / float16) against
    float32 on the same images: relative Frobenius error of the effects [B, N, d] and of
    the norms [B, N], and the smallest per-neuron cosine between the two effects."""
    import copy

    import torch

    from solens.lens.second_order import clear_directions_cache, second_order

    low = copy.deepcopy(model).to(dtype=getattr(torch, dtype))
    ref = second_order(model.to(dtype=torch.float32), x.float(), layer, cache=False).float()
    got = second_order(low, x.to(low.dtype), layer, cache=False).float()
    clear_directions_cache(low)
    err = float((got - ref).norm() / ref.norm())
    nerr = float((got.norm(dim=-1) - ref.norm(dim=-1)).norm() / ref.norm(dim=-1).norm())
    cos = torch.nn.functional.cosine_similarity(got.flatten(0, 1), ref.flatten(0, 1), dim=-1)
    big = ref.flatten(0, 1).norm(dim=-1) > 1e-6 * ref.norm(dim=-1).max()
    return {"dtype": dtype, "rel_error_effects": err, "rel_error_norms": nerr,
            "min_cosine": float(cos[big].min()) if bool(big.any()) else float("nan")}


def _worker(shape: str, layer: int, batches: list[int], device: str, repeats: int,
            precision: bool) -> dict[str, Any]:
    import torch

    from solens.models.loading import load_model

    torch.manual_seed(0)
    model = load_model(shape, "random", device=device, text=False)
    rates = machine_rates(device)
    out: dict[str, Any] = {"rates": rates,
                           "rows": measure(model, layer, batches, device, repeats, rates)}
    if precision:
        x = torch.randn(max(1, min(batches[-1], 8)), 3, model.info.image_size,
                        model.info.image_size, device=device)
        out["precision"] = [precision_check(model, x, layer, dt)
                            for dt in ("bfloat16", "float16")]
    return out


def _load_worker(shape: str, text: bool, checkpoint: str | None) -> dict[str, Any]:
    from solens.models.loading import load_model

    before = _rss_mb()
    if checkpoint:
        m = load_model(shape, checkpoint=checkpoint, text=text)
    else:
        m = load_model(shape, "random", text=text)
    return {"shape": shape, "text": text, "checkpoint": bool(checkpoint),
            "rss_before_mb": before, "rss_after_mb": _rss_mb(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_m": sum(p.numel() for p in (m.owner or m.visual).parameters()) / 1e6}


def _run(args: list[str], threads: int | None = None) -> dict[str, Any] | str:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env)
    if res.returncode != 0:
        return "worker failed: " + (res.stderr.strip().splitlines() or ["killed"])[-1][:300]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | layer | batch | forward img/s | effects img/s | effects / forward | "
            "API 2nd call / traced fwd | its floor | lens GFLOP/img | achieved of floor | "
            "peak RSS MB |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['batch']} | {r['forward_images_per_s']:.3g} | "
            f"{r['effects_images_per_s']:.3g} | {r['effects_over_forward']:.2f} | "
            f"{r['api_second_over_trace']:.2f} | {r['api_floor_over_trace']:.2f} | "
            f"{r['gflop_lens_per_image_analytic']:.3f} | "
            f"{r['achieved_fraction']:.0%} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=list(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", action="store_true",
                    help="bf16/fp16 against fp32 (meant for CUDA; slow on CPU)")
    ap.add_argument("--load", action="store_true", help="RSS of load_model with/without text")
    ap.add_argument("--quick", action="store_true", help="ViT-B-32 layer 10, batch 1 only")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per worker (1 on a machine other jobs share: OpenMP "
                    "threads that wait for a busy core slow everything down)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=3, metavar=("SHAPE", "LAYER", "BATCHES"))
    ap.add_argument("--load-worker", nargs=3, metavar=("SHAPE", "TEXT", "CHECKPOINT"))
    args = ap.parse_args()
    if args.worker:
        shape, layer, batches = args.worker
        res = _worker(shape, int(layer), [int(b) for b in batches.split(",")], args.device,
                      args.repeats, args.precision)
        print(json.dumps(res))
        return
    if args.load_worker:
        shape, text, ckpt = args.load_worker
        print(json.dumps(_load_worker(shape, text == "1", ckpt if ckpt != "-" else None)))
        return
    load1 = os.getloadavg()[0]
    configs = {"ViT-B-32": {10: [1]}} if args.quick else {s: CONFIGS[s] for s in args.shapes}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    precision: list[dict[str, Any]] = []
    rates: dict[str, float] = {}
    for shape, layers in configs.items():
        for layer, batches in layers.items():
            cmd = ["--device", args.device, "--repeats", str(args.repeats),
                   "--worker", shape, str(layer), ",".join(map(str, batches))]
            if args.precision:
                cmd.insert(0, "--precision")
            res = _run(cmd, args.threads)
            if isinstance(res, str):
                notes.append(f"{shape} layer {layer}: {res}")
                print(notes[-1], file=sys.stderr)
                continue
            rows += res["rows"]
            rates = res["rates"]
            precision += [{"model": shape, "layer": layer, **p} for p in res.get("precision", [])]
            for r in res["rows"]:
                print(f"  {shape} layer {layer:2d} batch {r['batch']:3d}: effects "
                      f"{r['effects_images_per_s']:.3g} img/s, x{r['effects_over_forward']:.2f} "
                      f"forward, API 2nd call x{r['api_second_over_trace']:.2f} trace",
                      file=sys.stderr)
    load_rows = []
    if args.load:
        with tempfile.TemporaryDirectory() as tmp:
            import open_clip
            import torch

            ckpt = Path(tmp) / "b32.pt"
            torch.save(open_clip.create_model("ViT-B-32").state_dict(), ckpt)
            for c in ("-", str(ckpt)):
                for text in ("1", "0"):
                    res = _run(["--load-worker", "ViT-B-32", text, c], args.threads)
                    if isinstance(res, str):
                        notes.append(f"load ViT-B-32 text={text}: {res}")
                    else:
                        load_rows.append(res)
    import torch

    out = {
        "benchmark": "performance",
        "device": args.device,
        "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "load_average_start": load1,
        "load_average_end": os.getloadavg()[0],
        "weights": "random",
        "rates": rates,
        "rows": rows,
        "precision": precision if precision else
        "not measured (needs --precision; meant for a CUDA device)",
        "load": load_rows,
        "notes": notes,
    }
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(_table(rows))
    for r in load_rows:
        print(f"load {r['shape']} text={r['text']} checkpoint={r['checkpoint']}: "
              f"RSS {r['rss_after_mb']:.0f} MB (peak {r['peak_rss_mb']:.0f})")


if __name__ == "__main__":
    main()
