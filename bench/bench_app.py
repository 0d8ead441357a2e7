"""App benchmarks: cold start to first prediction, per-request latency, few-shot end to end.

    python bench/bench_app.py [--backbone tiny|full|both] [--skip-fewshot]

- cold start: `python app.py` in a subprocess until the first `/predict` answers (gradio_client);
- latency: 10 sequential `/predict` and 3 `/explain` calls on the running app;
- few-shot: the Few-shot tab's job (validation + encoding + training + held-out check + saving)
  on 4 classes x 8 images with the tab's default settings, on the full-size random model, and the
  exact-mode estimate for the same job (one exact epoch measured, times the epochs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import free_port, full_size_spec, machine, peak_rss_mb, table
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "assets" / "examples" / "ct_small.dcm"
EXAMPLE_PNG = REPO / "assets" / "examples" / "ct_small.png"


def upload_like(folder: Path) -> Path:
    """An image that is not a shipped example (those are cached: app.examples), so every call computes."""
    path = folder / "upload.png"
    Image.open(EXAMPLE_PNG).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    return path


def app_timings(spec: str, zerogpu_sim: bool = False) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    if zerogpu_sim:
        env["DPT_SIMULATE_ZEROGPU"] = "1"
    tmp = tempfile.TemporaryDirectory()
    upload = upload_like(Path(tmp.name))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--backbone", spec, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "WARNING"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = None
        while client is None:
            if proc.poll() is not None:
                raise RuntimeError("the app exited during start-up")
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("the app did not start within 600 s")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                time.sleep(0.5)
        up = time.perf_counter() - t0
        client.predict(handle_file(str(upload)), "btmri", api_name="/predict")
        first = time.perf_counter() - t0
        lat = []
        for _ in range(10):
            t = time.perf_counter()
            client.predict(handle_file(str(upload)), "btmri", api_name="/predict")
            lat.append(time.perf_counter() - t)
        cached = []
        for _ in range(6):  # a shipped example: the first call computes, the others hit the lazy cache
            t = time.perf_counter()
            client.predict(handle_file(str(EXAMPLE)), "btmri", api_name="/predict")
            cached.append(time.perf_counter() - t)
        exp = []
        for method in ("gradcam", "rollout", "gradcam"):
            t = time.perf_counter()
            client.predict(handle_file(str(upload)), "btmri", method=method, api_name="/explain")
            exp.append(time.perf_counter() - t)
        return {"up": up, "first": first, "p50": statistics.median(lat),
                "p90": float(np.percentile(lat, 90)), "explain": statistics.median(exp),
                "example_first": cached[0], "example_cached": statistics.median(cached[1:])}
    finally:
        tmp.cleanup()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def fewshot_timings(spec: str) -> dict:
    import torch

    from app.jobs import run_fewshot
    from app.uploads import load_class_images
    from dpt_core.backbone import load_backbone
    from dpt_core.fewshot import TrainSettings, plan_holdout
    from dpt_core.train import TrainConfig, fit_epochs
    from dpt_core.workflow import prepare_training, setup_classes

    bb = load_backbone(spec, "cpu")
    setup = setup_classes("btmri")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for c in range(4):
            paths = []
            for i in range(8):
                p = Path(tmp) / f"{c}_{i}.png"
                Image.fromarray(rng.integers(0, 255, (320, 320), dtype=np.uint8)).save(p)
                paths.append(str(p))
            files.append(paths)
        settings = TrainSettings.from_setup(setup)
        t0 = time.perf_counter()
        data = load_class_images(setup.class_names, files)
        result = run_fewshot(bb, setup, data, settings, Path(tmp) / "ck")
        total = time.perf_counter() - t0
        # exact mode, same job: one epoch over the same training images, measured, times the epochs
        split = plan_holdout(data.labels, settings.seed)
        train = data.subset(split[0]) if split else data
        exact = TrainConfig(epochs=1, mode="exact", loss_weights=setup.loss_weights)
        model, teacher, state = prepare_training(bb, setup, train, exact, settings.teacher)
        t = time.perf_counter()
        fit_epochs(model, train, teacher, exact, state)
        exact_epoch = time.perf_counter() - t
    return {"total": total, "settings": settings, "timings": result.timings, "n_train": result.n_train,
            "exact_estimate": exact_epoch * settings.epochs + result.timings["encode_s"], "exact_epoch": exact_epoch,
            "epochs_done": result.epochs_completed, "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", choices=["tiny", "full", "both"], default="both")
    ap.add_argument("--skip-fewshot", action="store_true")
    ap.add_argument("--zerogpu-sim", action="store_true",
                    help="also time the app on tiny under the ZeroGPU simulator (a forked process per model call)")
    args = ap.parse_args()
    specs = {"tiny": "tiny", "full": full_size_spec()}
    names = ["tiny", "full"] if args.backbone == "both" else [args.backbone]
    rows = []
    # The simulator forks a fresh process per call, so every call rebuilds its prompts: on a 2-core CPU
    # with the full-size model that alone outlasts a slot. It checks the rules; time it on tiny.
    runs = [(name, False) for name in names] + ([("tiny", True)] if args.zerogpu_sim else [])
    for name, sim in runs:
        r = app_timings(specs[name], sim)
        label = f"{name} (ZeroGPU sim)" if sim else name
        rows += [(label, "process start -> server up", f"{r['up']:.1f} s"),
                 (label, "process start -> first /predict answered", f"{r['first']:.1f} s"),
                 (label, "/predict latency p50 / p90 (sequential, an upload)",
                  f"{r['p50'] * 1000:.0f} / {r['p90'] * 1000:.0f} ms"),
                 (label, "/predict on a shipped example: first / cached (median)",
                  f"{r['example_first'] * 1000:.0f} / {r['example_cached'] * 1000:.0f} ms "
                  f"({r['example_first'] / r['example_cached']:.1f}x)"),
                 (label, "/explain latency median (Grad-CAM, rollout)", f"{r['explain'] * 1000:.0f} ms")]
    if not args.skip_fewshot:
        for name in names:
            f = fewshot_timings(specs[name])
            s, tm = f["settings"], f["timings"]
            rows += [(name, f"few-shot 4 classes x 8 images, defaults ({s.epochs} epochs, {s.views} views), end to end",
                      f"{f['total']:.1f} s"),
                     (name, "  of which: encode 32 images / augmented views / training steps / held-out check",
                      f"{tm['encode_s']:.1f} / {tm['views_s']:.1f} / {tm['fit_s']:.1f} / "
                      f"{tm.get('check_s', 0):.2f} s"),
                     (name, f"exact mode, same job (1 epoch measured: {f['exact_epoch']:.1f} s, x {s.epochs})",
                      f"{f['exact_estimate']:.0f} s ({f['exact_estimate'] / f['total']:.1f}x)")]
    print(f"machine: {machine()}")
    print(table(rows, ("backbone", "what", "time")))
    print(f"peak RSS of the benchmark process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
