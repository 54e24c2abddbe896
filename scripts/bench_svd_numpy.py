#!/usr/bin/env python3
"""Time numpy.linalg.svd(full_matrices=False) at the shapes of the madeit-linalg SVD bench.

Reference numbers for docs/performance.md ("## SVD"): the median over a few runs of a
thin SVD of a Gaussian f32 matrix, with the BLAS/LAPACK thread pool limited to 2 threads
(set before numpy is imported).

With --torch it also times torch.linalg.svd and the randomized torch.svd_lowrank with
q = rank + 10 columns and niter = 2 (the settings of madeit's default randomized path,
rank = round(0.1 x min dim)).

Setup (any Python >= 3.9):
    python3 -m venv .venv && .venv/bin/pip install numpy        # add torch for --torch
Run:
    .venv/bin/python scripts/bench_svd_numpy.py [--threads 2] [--runs 5] [--dtype f32] [--torch]
"""

import argparse
import os
import sys
import time


SHAPES = [(768, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per shape (default 5)")
    parser.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    parser.add_argument("--torch", action="store_true", help="also time torch (CPU)")
    args = parser.parse_args()

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np  # noqa: E402  (after the thread variables are set)

    torch = None
    if args.torch:
        import torch  # noqa: E402

        torch.set_num_threads(args.threads)

    dtype = np.float32 if args.dtype == "f32" else np.float64
    rng = np.random.default_rng(1)
    print(f"numpy {np.__version__}, {args.threads} threads, {args.dtype}, median of {args.runs} runs")
    header = "| shape | numpy.linalg.svd thin (ms) |"
    if torch is not None:
        print(f"torch {torch.__version__}")
        header += " torch.linalg.svd thin (ms) | torch.svd_lowrank q=r+10 niter=2 (ms) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for m, n in SHAPES:
        a = rng.standard_normal((m, n)).astype(dtype)
        row = f"| {m}x{n} | {median_ms(lambda: np.linalg.svd(a, full_matrices=False), args.runs):.1f} |"
        if torch is not None:
            t = torch.from_numpy(a)
            rank = round(0.1 * min(m, n))
            row += f" {median_ms(lambda: torch.linalg.svd(t, full_matrices=False), args.runs):.1f} |"
            row += f" {median_ms(lambda: torch.svd_lowrank(t, q=rank + 10, niter=2), args.runs):.1f} |"
        print(row)
    return 0


def median_ms(fn, runs: int) -> float:
    """Median wall time of `fn()` in milliseconds over `runs` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


if __name__ == "__main__":
    sys.exit(main())
