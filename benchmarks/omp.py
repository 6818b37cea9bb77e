"""Benchmark: batched torch OMP for a whole ViT-B/32-sized layer vs scikit-learn.

Default problem: 3,072 neurons (random unit r_n, d = 512) decomposed into m = 128 terms
over a *random* dictionary of 30,000 texts (Gaussian embeddings through
``prepare_dictionary``: the cost does not depend on what the embeddings are, and embedding
the real words-30k with a ViT-B/32 text tower takes far longer than the OMP on this CPU).
scikit-learn's ``orthogonal_mp`` (Cholesky OMP, no precomputed 30k x 30k Gram) runs on a
subset and is extrapolated linearly; the subset also checks that both select the same
atoms with the same coefficients.

    python benchmarks/omp.py                      # full benchmark, writes results/omp.json
    python benchmarks/omp.py --neurons 512 --sklearn-neurons 4 --out /tmp/omp.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def main() -> None:
    from solens.describe.omp import omp, prepare_dictionary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--neurons", type=int, default=3072)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--pool", type=int, default=30_000)
    ap.add_argument("--terms", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--sklearn-neurons", type=int, default=8)
    ap.add_argument("--nonneg-neurons", type=int, default=512,
                    help="also time NNOMP on this many neurons (0: skip)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "omp.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(args.seed)
    D, _ = prepare_dictionary(torch.randn(args.pool, args.d, generator=g))
    R = torch.randn(args.neurons, args.d, generator=g, dtype=torch.float64)
    R = R / R.norm(dim=1, keepdim=True)
    D = D.to(args.device)
    load_before = load()
    rows = []

    def report(name: str, n: int, seconds: float, note: str = "") -> None:
        rate = n / seconds
        rows.append({
            "method": name, "neurons": n, "seconds": round(seconds, 2),
            "neurons_per_s": round(rate, 2),
            "extrapolated_s_all": round(args.neurons / rate, 1), "note": note,
        })
        print(f"  {name:<28} {n:>6} neurons {seconds:>9.1f} s {rate:>9.2f} /s"
              f"   -> {args.neurons / rate:>8.1f} s for {args.neurons}", flush=True)

    print(f"OMP benchmark: {args.neurons} targets, d={args.d}, pool={args.pool}, "
          f"m={args.terms}, batch={args.batch_size}, threads={torch.get_num_threads()}, "
          f"device={args.device}, load={load_before}", flush=True)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        print(f"    ... {done[0]}/{args.neurons} ({time.perf_counter() - t0:.0f} s)", flush=True)

    t0 = time.perf_counter()
    res = omp(D, R.to(args.device), args.terms, batch_size=args.batch_size, progress=tick)
    report("solens omp (torch)", args.neurons, time.perf_counter() - t0)

    if args.nonneg_neurons:
        n = min(args.nonneg_neurons, args.neurons)
        t0 = time.perf_counter()
        omp(D, R[:n].to(args.device), args.terms, nonneg=True, batch_size=args.batch_size)
        report("solens nnomp (torch+scipy)", n, time.perf_counter() - t0)

    agree = None
    if args.sklearn_neurons:
        from sklearn.linear_model import orthogonal_mp

        n = min(args.sklearn_neurons, args.neurons)
        X = D.cpu().double().numpy().T  # [d, K], unit columns
        t0 = time.perf_counter()
        ref = orthogonal_mp(X, R[:n].numpy().T, n_nonzero_coefs=args.terms, precompute=False)
        report("sklearn orthogonal_mp", n, time.perf_counter() - t0, "extrapolated linearly")
        same = all(set(np.nonzero(ref[:, b])[0]) == set(res.indices[b]) for b in range(n))
        err = max(float(np.abs(ref[res.indices[b], b] - res.coefs[b]).max()) for b in range(n))
        agree = {"neurons": n, "same_atoms": same, "max_coef_abs_diff": err}
        print(f"  agreement with sklearn on {n} neurons: same atoms {same}, "
              f"max |coef diff| {err:.2e}")

    out = {
        "benchmark": "omp",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "problem": {"neurons": args.neurons, "d": args.d, "pool": args.pool,
                    "terms": args.terms, "dictionary": "random Gaussian, prepare_dictionary",
                    "targets": "random unit vectors"},
        "batch_size": args.batch_size,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.uname().machine,
        "load_avg_before": load_before,
        "load_avg_after": load(),
        "results": rows,
        "sklearn_agreement": agree,
        "mean_cosine": float(res.cosine.mean()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
