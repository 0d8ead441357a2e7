"""Load and fault test of the demo's public API, on the real app launched in-process (loopback only).

    python bench/load_test.py [--backbone tiny|full] [--users 20] [--seconds 45] [--epochs N]

Load: N users (threads, each with its own gradio_client.Client) call /predict (preset btmri, on
altered copies of assets/examples/ct_small.dcm and ct_small.png, so that no answer comes from the
examples' cache) in a loop while one few-shot training runs the way
the Few-shot tab runs it (run_fewshot submitted to the app's one job runner, app.jobs.RUNNER).
Faults, each followed by a health check (one normal /predict within a timeout): (a) clients that
drop the connection mid-request, (b) a training stopped after a few steps, (c) malformed requests.
Prints a markdown table for bench/README.md; exit status 0 only if every check passed.
"""
from __future__ import annotations  # noqa: I001 - `common` goes first: it sets sys.path

import argparse
import contextlib
import io
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common import free_port, full_size_spec, machine, table  # first: puts the repo root on sys.path, offline Hub

import app  # noqa: F401 - sets the app's privacy environment before gradio is imported
import httpx
import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

from app.jobs import RUNNER, Job
from app.uploads import load_class_images
from dpt_core.errors import TrainingStopped
from dpt_core.fewshot import TrainSettings
from app.job_channel import FileChannel
from app.main import QUEUE_CONCURRENCY, build_demo, launch_options
from app.services import Services

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
# DICOM and PNG decoding paths. Altered copies of two examples, made in main(): predictions on the
# shipped examples themselves are cached (app.examples), and the load must reach the model.
IMAGES: list[Path] = []


def upload_copies(folder: Path) -> list[Path]:
    import pydicom

    ds = pydicom.dcmread(EXAMPLES / "ct_small.dcm")
    ds.InstanceNumber = 9999  # another file, the same image
    dcm = folder / "scan.dcm"
    ds.save_as(dcm)
    png = folder / "scan.png"
    Image.open(EXAMPLES / "ct_small.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(png)
    return [dcm, png]
PRESET = "btmri"
MAX_SECONDS = 60  # hard cap of the load phase, in-flight requests included
HEALTH_TIMEOUT = 60.0
FILE_META = {"_type": "gradio.FileData"}


def launch(spec: str):
    services = Services(spec)
    services.backbone  # noqa: B018 - loaded before launching, as app.main.main does: no user pays for it
    demo = build_demo(services)
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY)  # as app.main.main
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                            quiet=True, **launch_options())
    return services, demo, url.rstrip("/")


def predict(client: Client, image: Path, timeout: float) -> None:
    """One /predict call; raises on an error, a timeout or an answer that is not a 4-class prediction."""
    job = client.submit(handle_file(str(image)), PRESET, api_name="/predict")
    try:
        label, details = job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()  # nobody waits for it any more: let the queue drop it
        raise
    if len(label["confidences"]) != 4 or label["label"] != details["prediction"]:
        raise AssertionError(f"malformed /predict answer: {str(label)[:200]}")


def health(client: Client) -> tuple[bool, str]:
    t = time.perf_counter()
    try:
        predict(client, IMAGES[1], HEALTH_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return False, f"health FAILED ({type(exc).__name__}: {str(exc)[:200]})"
    return True, f"health {time.perf_counter() - t:.2f} s"


# --------------------------------------------------------------------------- few-shot training

def synthetic_uploads(folder: Path, n_classes: int = 4, per_class: int = 8) -> list[list[str]]:
    """PNG files of one texture per class: the tab decodes uploaded files, so this goes through the same path."""
    rng = np.random.default_rng(0)
    files = []
    for c in range(n_classes):
        paths = []
        for i in range(per_class):
            a = rng.integers(0, 60, (224, 224, 3)).astype(np.uint8)
            a[:, c::8, c % 3] = 230  # stripes whose phase and colour depend on the class
            path = folder / f"class{c}_{i}.png"
            Image.fromarray(a).save(path)
            paths.append(str(path))
        files.append(paths)
    return files


def start_training(services: Services, files: list[list[str]], epochs: int, out_dir: Path) -> Job:
    """What the Train button does: validated uploads, tab defaults with the epochs overridden, one job."""
    setup = services.setup(PRESET)
    data = load_class_images(setup.class_names, files)
    settings = TrainSettings.from_setup(setup, gpu=services.backbone.device.type == "cuda", epochs=epochs)

    def work(channel):
        return services.run_fewshot(setup, data, settings, out_dir, "synthetic load-test images", channel)

    # As the tab does: a file channel, which reaches the training also when it runs in GPU calls.
    return RUNNER.submit(f"load-test-{out_dir.name}", work, FileChannel(out_dir.with_name(out_dir.name + "-channel")))


# --------------------------------------------------------------------------- load

@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    cut: int = 0  # requests still unanswered at the hard end of the phase
    lock: threading.Lock = field(default_factory=threading.Lock)


def user(client: Client, k: int, start_until: float, end: float, out: LoadResult) -> None:
    """Loop until the deadline; no request is started that its user's last latency says cannot end in time."""
    i, last = k, 0.0  # users start on different files, so DICOM and PNG are decoded concurrently
    while time.monotonic() < start_until and time.monotonic() + last < end:
        t = time.perf_counter()
        try:
            predict(client, IMAGES[i % len(IMAGES)], timeout=max(0.1, end - time.monotonic()))
            last = time.perf_counter() - t
            with out.lock:
                out.latencies.append(last)
        except TimeoutError:  # cut by our own cap (the server is still working on it): reported, not an error
            with out.lock:
                out.cut += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported by type
            with out.lock:
                out.errors[f"{type(exc).__name__}: {str(exc)[:200]}"] += 1
        i += 1


def percentile(values: list[float], p: float) -> float:
    """Interpolated percentile, as bench_app.py reports them (numpy's default)."""
    return float(np.percentile(values, p)) if values else float("nan")


# --------------------------------------------------------------------------- faults

def upload(http: httpx.Client, path: Path) -> dict:
    with path.open("rb") as fh:
        r = http.post("/gradio_api/upload", files=[("files", (path.name, fh))])
    r.raise_for_status()
    return {"path": r.json()[0], "meta": FILE_META}


def call_body(*data) -> dict:
    return {"data": list(data) + [None] * (6 - len(data))}  # the raw API wants all 6 inputs


def fault_disconnect(http: httpx.Client, client: Client) -> tuple[bool, str]:
    """(a) Requests whose client goes away: the queue must drain and the server keep answering.

    The /call API sends nothing before the result of a non-streaming event, so the SSE streams
    are closed right after their headers; 8 are queued at once against 2 workers, so most are
    dropped while waiting or running. gradio_client jobs cancelled right after submit add the
    client-side variant (cancel before or during processing).
    """
    body = call_body(upload(http, IMAGES[0]), PRESET)
    ids = [http.post("/gradio_api/call/predict", json=body).json()["event_id"] for _ in range(8)]
    for eid in ids:
        with http.stream("GET", f"/gradio_api/call/predict/{eid}") as r:
            r.raise_for_status()  # headers read; leaving the block closes the connection unread
    for job in [client.submit(handle_file(str(IMAGES[1])), PRESET, api_name="/predict") for _ in range(4)]:
        job.cancel()
    t = time.monotonic()
    while http.get("/gradio_api/queue/status").json().get("queue_size", 0) and time.monotonic() - t < 30:
        time.sleep(0.2)
    queued = http.get("/gradio_api/queue/status").json().get("queue_size", 0)
    ok, h = health(client)
    drained = f"in {time.monotonic() - t:.1f} s" if not queued else f"NOT ({queued} left)"
    return ok and queued == 0, f"8 SSE streams dropped, 4 jobs cancelled; queue drained {drained}; {h}"


def fault_stop_training(services: Services, files, out_dir: Path, client: Client) -> tuple[bool, str]:
    """(b) Stop a long training after its first steps: it must end soon, free the runner, leave the server up."""
    epochs = 50
    job = start_training(services, files, epochs, out_dir)
    t = time.monotonic()
    while not job.wait(0.1) and time.monotonic() - t < 180:
        st = job.status
        if st.phase == "training" and st.fraction >= 0.01:  # >= 3 of its 300 steps (6 steps per epoch)
            break
    step_text = job.status.text
    job.stop()
    t = time.monotonic()
    ended = job.wait(60)
    stop_s = time.monotonic() - t
    free = not RUNNER.busy()
    clean = job.error is None or isinstance(job.error, TrainingStopped)
    kept = (f"kept {job.result.epochs_completed} epoch(s)" if job.result is not None
            else f"{type(job.error).__name__}: {job.error}" if job.error else "no result")
    ok, h = health(client)
    took = f"in {stop_s:.1f} s" if ended else "NOT within 60 s"
    detail = (f"stop at '{step_text.split(' - ')[0]}'; ended {took}, {kept}; "
              f"runner {'free' if free else 'STILL BUSY'}; {h}")
    return ok and ended and free and clean, detail


def fault_malformed(http: httpx.Client, client: Client) -> list[tuple[str, bool, str]]:
    """(c) Bad requests must get a 4xx or an error event, never a result, a 5xx or a dead server."""
    fd = upload(http, IMAGES[1])
    cases = [
        ("garbage JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("JSON without 'data'", {"json": {"fn_index": 1}}),
        ("wrong arity (2 of 6 inputs)", {"json": {"data": [fd, PRESET]}}),
        ("wrong type (frame='abc')", {"json": call_body(fd, PRESET, None, None, None, "abc")}),
        ("nonexistent file path", {"json": call_body({"path": "/nonexistent/scan.dcm", "meta": FILE_META}, PRESET)}),
        ("server file outside the cache", {"json": call_body({"path": "/etc/hostname", "meta": FILE_META}, PRESET)}),
        ("huge string (4 MB preset)", {"json": call_body(fd, "x" * 4_000_000)}),
        ("huge string (4 MB classes)", {"json": call_body(fd, "custom", None, "a,b," * 1_000_000)}),
    ]
    rows = []
    for name, kwargs in cases:
        try:
            r = http.post("/gradio_api/call/predict", **kwargs)
            if 400 <= r.status_code < 500:
                rows.append((name, True, f"HTTP {r.status_code}"))
                continue
            if r.status_code != 200:
                rows.append((name, False, f"HTTP {r.status_code}: {r.text[:100]}"))
                continue
            events = http.get(f"/gradio_api/call/predict/{r.json()['event_id']}").text
            size = f" ({len(events) / 1e6:.1f} MB: the message echoes the input)" if len(events) > 100_000 else ""
            ok = events.startswith("event: error")
            rows.append((name, ok, ("error event" + size) if ok else f"NOT an error: {events[:100]!r}"))
        except httpx.HTTPError as exc:
            rows.append((name, False, f"{type(exc).__name__}: {exc}"))
    return rows


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=("tiny", "full"), default="tiny",
                    help="tiny test model, or a random-weight model of BiomedCLIP's exact shape")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=45, help=f"load phase, capped at {MAX_SECONDS}")
    ap.add_argument("--epochs", type=int, default=None, help="few-shot epochs under load (tiny 30, full 2)")
    args = ap.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    grace = min(10.0, seconds / 4)  # the last requests' time to finish, inside the cap
    epochs = args.epochs or (30 if args.backbone == "tiny" else 2)  # tiny: lasts most of the window under load
    spec = "tiny" if args.backbone == "tiny" else full_size_spec()

    services, demo, url = launch(spec)
    work = Path(tempfile.mkdtemp(prefix="dpt-load-"))
    IMAGES[:] = upload_copies(work)
    files = synthetic_uploads(work)
    rows: list[tuple] = [("machine", machine(), ""),
                         ("backbone", f"{args.backbone} ({services.backbone.spec}, {services.backbone.device})", "")]
    passed: list[bool] = []
    try:
        with ThreadPoolExecutor(args.users) as pool:  # each user has its own Client (own session, heartbeat)
            clients = list(pool.map(lambda _: Client(url, verbose=False, download_files=False), range(args.users)))
        probe = clients[0]
        ok, h = health(probe)  # also builds the btmri predictor, which any running server has cached
        rows.append(("before load (builds the btmri predictor)", h, "PASS" if ok else "FAIL"))
        passed.append(ok)

        out = LoadResult()
        start = time.monotonic()
        job = start_training(services, files, epochs, work / "under-load")
        users = [threading.Thread(target=user, args=(c, k, start + seconds - grace, start + seconds, out), daemon=True)
                 for k, c in enumerate(clients)]
        for th in users:
            th.start()
        for th in users:
            th.join(timeout=max(0.0, start + seconds + 5 - time.monotonic()))
        elapsed = time.monotonic() - start
        stuck = sum(th.is_alive() for th in users)
        if job.wait(0):
            train = (f"finished in {job.result.timings['total_s']:.0f} s ({job.result.epochs_completed}/{epochs} "
                     "epochs)" if job.error is None else f"FAILED: {type(job.error).__name__}: {job.error}")
        else:
            st = job.status
            train = f"still running at the end ({st.phase}, {st.fraction:.0%} of steps); stopped"
            job.stop()
        train_ok = job.wait(60) and job.error is None

        lat = sorted(out.latencies)
        n_err = sum(out.errors.values())
        rows += [
            ("load", (f"{args.users} users x {seconds:.0f} s (new requests until {seconds - grace:.0f} s), "
                      f"/predict {PRESET} on {' + '.join(p.name for p in IMAGES)}"), ""),
            ("requests", f"{len(lat)} answered, {n_err} errors"
                         + (f", {out.cut} unanswered at the {seconds:.0f} s cap" if out.cut else "")
                         + (f", {stuck} users stuck" if stuck else ""),
             "PASS" if n_err == 0 and stuck == 0 and lat else "FAIL"),
            ("throughput", f"{len(lat) / elapsed:.1f} req/s over {elapsed:.1f} s", ""),
            ("latency p50/p90/p95/p99/max", " / ".join(f"{percentile(lat, p):.2f}" for p in (50, 90, 95, 99, 100))
             + " s", ""),
            (f"few-shot training under load ({len(files)}x{len(files[0])} images, {epochs} epochs)", train,
             "PASS" if train_ok else "FAIL"),
        ]
        passed += [n_err == 0 and stuck == 0 and bool(lat), train_ok]
        for msg, n in out.errors.most_common(5):
            print(f"load error x{n}: {msg}")

        with httpx.Client(base_url=url, timeout=60) as http:
            ok, detail = fault_disconnect(http, probe)
            rows.append(("(a) clients disconnect mid-request", detail, "PASS" if ok else "FAIL"))
            passed.append(ok)
            ok, detail = fault_stop_training(services, files, work / "stopped", probe)
            rows.append(("(b) training stopped after a few steps", detail, "PASS" if ok else "FAIL"))
            passed.append(ok)
            server_log = io.StringIO()  # Gradio prints a traceback per rejected input: count them, don't show them
            with contextlib.redirect_stderr(server_log):
                cases = fault_malformed(http, probe)
            rows += [(f"(c) {name}", detail, "PASS" if ok else "FAIL") for name, ok, detail in cases]
            passed += [ok for _, ok, _ in cases]
            ok, h = health(probe)
            rows.append(("(c) after malformed requests",
                         f"{h}; {server_log.getvalue().count('Traceback')} tracebacks in the server log",
                         "PASS" if ok else "FAIL"))
            passed.append(ok)
        for c in clients:
            c.close()
    finally:
        demo.close()
        shutil.rmtree(work, ignore_errors=True)  # synthetic images and the trained checkpoints

    print(table(rows, ("Check", "Result", "Pass")))
    print(f"\n{'ALL PASSED' if all(passed) else 'FAILED'}: {sum(passed)}/{len(passed)} checks")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
