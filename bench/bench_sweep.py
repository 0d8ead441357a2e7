"""Sweep wall time against the sum of its runs' times: Ray's parallel efficiency with N workers.

Writes the tests' synthetic benchmark in BiomedCoOp's layout (two datasets), starts a local Ray
with ``--workers`` CPUs (one CPU and one torch thread per run) and runs a small few-shot sweep
on it. Efficiency = sum of run times / (workers x sweep wall time); 1.0 would be perfect.
A run's own time includes loading the backbone the first time a worker process runs a task.

    python bench/bench_sweep.py [--workers 2] [--epochs 5] [--backbone tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import machine, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the synthetic benchmark writer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--shots", default="4,8")
    ap.add_argument("--seeds", default="1,2")
    args = ap.parse_args()

    import ray
    from biomedcoop_bench import write_benchmark

    from dpt_core.sweep import SweepSpec, run_sweep

    repo = str(Path(__file__).resolve().parent.parent)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_benchmark(Path(tmp) / "data", n_train=10, n_test=4)
        t = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo, "HF_HUB_OFFLINE": "1"}})
        ray_start = time.perf_counter() - t
        spec = SweepSpec(root=str(root), out=str(Path(tmp) / "runs"), datasets=("busi", "btmri"),
                         shots=tuple(int(k) for k in args.shots.split(",")),
                         seeds=tuple(int(s) for s in args.seeds.split(",")),
                         epochs=args.epochs, backbone=args.backbone, cpus_per_run=1)
        report = run_sweep(spec, on_line=lambda line: print(line, flush=True))
        ray.shutdown()
    load_after = os.getloadavg()
    n = len(report.finished)
    runs = sorted(o.seconds for o in report.finished)
    eff = report.run_seconds / (args.workers * report.wall_s) if report.wall_s else float("nan")
    print(f"\nmachine: {machine()}")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(table([
        ("Ray start (local, in-process)", f"{ray_start:.1f} s", ""),
        (f"sweep wall time ({n} runs, {len(report.failed)} failed)", f"{report.wall_s:.1f} s", ""),
        ("sum of the runs' own times", f"{report.run_seconds:.1f} s", ""),
        ("run time: shortest / longest", f"{runs[0]:.1f} / {runs[-1]:.1f} s" if runs else "-", ""),
        (f"parallel efficiency, {args.workers} workers", f"{eff:.2f}", "sum / (workers x wall)"),
        ("speed-up over running them one by one", f"{report.run_seconds / report.wall_s:.2f}x", ""),
    ], ("what", "value", "note")))


if __name__ == "__main__":
    main()
