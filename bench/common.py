"""Shared helpers for the benchmarks: the random full-size model, timing, machine description."""
from __future__ import annotations

import os
import platform
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

CACHE = Path(os.environ.get("DPT_BENCH_DIR", Path(__file__).resolve().parent / ".cache"))


def full_size_spec() -> str:
    """A random-weight model of BiomedCLIP's exact shape, written once to bench/.cache/."""
    from dpt_core.localdir import write_random_biomedclip

    folder = CACHE / "biomedclip-random"
    if not (folder / "open_clip_model.safetensors").is_file():
        write_random_biomedclip(folder)
    return f"local-dir:{folder}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timeit_pair(a, b, repeat: int = 9, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, measured alternately (a, b, a, b, ...) after a warm-up."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {dev}, Python {platform.python_version()}")


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = " | ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*header), "-|-".join("-" * w for w in widths)]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)
