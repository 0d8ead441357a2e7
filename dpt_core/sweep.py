"""The paper's grid of runs (datasets x shots x seeds) as Ray tasks: resumable, one failure isolated.

Ray is the scheduler (local in-process by default, a cluster with ``address``);
this module only lists the runs, skips the finished ones, submits the rest with
their CPU/GPU share and reports each as it ends. Every run is
``runs.run_training`` writing ``OUT/<protocol>/<preset>/shots_<K>/seed_<S>/``;
it trains into a temporary sibling folder and renames it when complete, so a
folder with a ``config.json`` is always a whole run. A run counts as finished
when its config records metrics (``ckpt_config.is_complete_run``).

Ray is a sweep-only dependency (requirements-dev.txt); nothing else imports it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .ckpt_config import is_complete_run
from .presets import list_presets
from .runs import RunSpec

log = logging.getLogger(__name__)

# BiomedCoOp's dataset folder (and split file) names of our presets.
DATASET_FOLDERS = {"btmri": "BTMRI", "busi": "BUSI", "chmnist": "CHMNIST", "covid": "COVID_19",
                   "ctkidney": "CTKidney", "dermamnist": "DermaMNIST", "kneexray": "KneeXray", "kvasir": "Kvasir",
                   "lungcolon": "LungColon", "octmnist": "OCTMNIST", "retina": "RETINA"}
DEFAULT_SHOTS = {"few_shot": (1, 2, 4, 8, 16), "base2novel": (16,)}


class SweepError(ValueError):
    """The sweep cannot start (bad root, dataset name, resources); the message says why."""


@dataclass(frozen=True)
class SweepSpec:
    root: str  # the folder holding BTMRI/, BUSI/, ... as BiomedCoOp ships them
    out: str  # RUNS
    protocol: str = "few_shot"
    datasets: tuple[str, ...] = ()  # presets; () = all
    shots: tuple[int, ...] = ()  # () = the protocol's (1,2,4,8,16 or 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int | None = None  # None: 100 few-shot, 50 base-to-novel
    backbone: str | None = None
    exact: bool = True  # --fast switches to the cached-views mode
    teacher: str = "mean"
    class_position: str = "end"
    descriptions: Mapping[str, Sequence[str]] | None = None
    gpus_per_run: float = 0.0
    cpus_per_run: int = 1


@dataclass(frozen=True)
class Job:
    name: str  # "<protocol>/<preset>/shots_<K>/seed_<S>"
    spec: RunSpec
    backbone: str | None
    device: str
    threads: int


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class SweepReport:
    finished: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def run_seconds(self) -> float:
        """Sum of the runs' own times (parallel efficiency = run_seconds / (wall_s * workers))."""
        return sum(o.seconds for o in self.finished + self.failed)

    def to_json(self) -> dict:
        return {"finished": [asdict(o) for o in self.finished], "skipped": self.skipped,
                "failed": [asdict(o) for o in self.failed], "wall_s": self.wall_s, "run_seconds": self.run_seconds}


def dataset_folder(root: str | Path, preset: str) -> Path:
    """``ROOT/<BiomedCoOp folder>`` of a preset (exact name first, then case-insensitive)."""
    root = Path(root)
    wanted = DATASET_FOLDERS.get(preset, preset)
    if (root / wanted).is_dir():
        return root / wanted
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and d.name.lower() in (wanted.lower(), preset.lower()):
            return d
    raise SweepError(f"no {wanted}/ folder for preset {preset} in {root}")


def plan(spec: SweepSpec) -> tuple[list[Job], list[str]]:
    """(jobs to run, names of finished runs to skip), in dataset, shots, seed order."""
    if spec.protocol not in DEFAULT_SHOTS:
        raise SweepError(f"protocol must be few-shot or base2novel, not {spec.protocol!r}")
    known = list_presets()
    datasets = list(spec.datasets) or known
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise SweepError(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if spec.cpus_per_run < 1 or spec.gpus_per_run < 0:
        raise SweepError("--cpus-per-run must be >= 1 and --gpus-per-run >= 0")
    device = "cuda" if spec.gpus_per_run > 0 else "cpu"
    folders, missing = {}, []
    for preset in datasets:
        try:
            folders[preset] = dataset_folder(spec.root, preset)
        except SweepError:
            missing.append(DATASET_FOLDERS.get(preset, preset))
    if missing:
        raise SweepError(f"{spec.root} lacks the dataset folder(s) {', '.join(missing)} "
                         "(BiomedCoOp's layout: ROOT/<NAME>/split_<NAME>.json); name the ones you have with --datasets")
    jobs, skipped = [], []
    for preset, folder in folders.items():
        for k in spec.shots or DEFAULT_SHOTS[spec.protocol]:
            for seed in spec.seeds:
                name = f"{spec.protocol}/{preset}/shots_{k}/seed_{seed}"
                out = Path(spec.out) / name
                run = RunSpec(data=str(folder), out=str(out), shots=k, seed=seed, preset=preset,
                              protocol=spec.protocol, epochs=spec.epochs, exact=spec.exact, teacher=spec.teacher,
                              class_position=spec.class_position, descriptions=spec.descriptions)
                if run_is_finished(out):
                    _check_same_recipe(out, run, spec.backbone)
                    skipped.append(name)
                    continue
                jobs.append(Job(name, run, spec.backbone, device, spec.cpus_per_run))
    return jobs, skipped


def _check_same_recipe(folder: Path, run: RunSpec, backbone: str | None) -> None:
    """A finished run is skipped only when it is the run asked for: another recipe in the same folder
    would be resumed over silently and then averaged with the new runs."""
    from .backbone import DEFAULT_BACKBONE

    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    tr = raw.get("training") or {}
    recorded = {"epochs": tr.get("epochs"), "mode": tr.get("mode"), "class position": tr.get("class_position"),
                "teacher": (raw.get("teacher") or {}).get("mode"), "backbone": raw.get("backbone")}
    wanted = {"epochs": run.n_epochs, "mode": "exact" if run.exact else "fast", "class position": run.class_position,
              "teacher": run.teacher, "backbone": backbone or DEFAULT_BACKBONE}
    differ = [f"{k} {recorded[k]} (asked: {wanted[k]})" for k in wanted if recorded[k] != wanted[k]]
    if differ:
        raise SweepError(f"{folder} holds a finished run made with other settings: {', '.join(differ)}; "
                         "choose another --out or remove that folder")


def run_is_finished(folder: str | Path) -> bool:
    """A run folder with a complete config (metrics recorded) and its tensors."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (folder / "prompts.safetensors").is_file() and is_complete_run(raw)


_BACKBONES: dict = {}  # per worker process: a Ray worker runs many tasks and keeps its backbone


def execute(job: Job) -> Outcome:
    """Run one job in this process (what each Ray task does); never raises."""
    import torch

    from .backbone import DEFAULT_BACKBONE, load_backbone
    from .runs import run_training

    start = time.perf_counter()
    final = Path(job.spec.out)
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        torch.set_num_threads(max(1, job.threads))  # threads per run = its CPUs
        key = (job.backbone or DEFAULT_BACKBONE, job.device)
        if key not in _BACKBONES:
            _BACKBONES[key] = load_backbone(key[0], job.device)
        shutil.rmtree(partial, ignore_errors=True)
        result = run_training(replace(job.spec, out=str(partial)), _BACKBONES[key])
        if final.exists():  # an incomplete earlier attempt
            shutil.rmtree(final)
        os.replace(partial, final)
        return Outcome(job.name, True, time.perf_counter() - start, result.metrics)
    except Exception as exc:  # one failing run is reported, never stops the others
        log.debug("run %s failed:\n%s", job.name, traceback.format_exc())
        shutil.rmtree(partial, ignore_errors=True)
        text = str(exc).splitlines()[0] if str(exc) else ""
        return Outcome(job.name, False, time.perf_counter() - start, error=f"{type(exc).__name__}: {text}")


def _summary(o: Outcome) -> str:
    m = o.metrics
    if "harmonic_mean" in m:
        return f"base {m['base_accuracy']:.4f} novel {m['novel_accuracy']:.4f} HM {m['harmonic_mean']:.4f}"
    return f"accuracy {m['accuracy']:.4f}" if "accuracy" in m else "no test metrics"


def run_sweep(spec: SweepSpec, address: str | None = None, on_line: Callable[[str], None] = print,
              num_cpus: int | None = None) -> SweepReport:
    """Plan, skip finished runs, run the rest as Ray tasks; one line per finished run.

    Joins a running Ray (``ray.is_initialized()``), else ``address`` (a cluster), else
    starts a local Ray in this process with ``num_cpus`` (default: all cores).
    """
    import ray

    start = time.perf_counter()
    jobs, skipped = plan(spec)
    report = SweepReport(skipped=skipped)
    if skipped:
        on_line(f"skipping {len(skipped)} finished run(s)")
    if not jobs:
        report.wall_s = time.perf_counter() - start
        return report
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:  # local workers import dpt_core from this checkout
            pkg_parent = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    task = ray.remote(execute).options(num_cpus=spec.cpus_per_run, num_gpus=spec.gpus_per_run, max_retries=0)
    pending = {task.remote(job): job for job in jobs}
    on_line(f"running {len(jobs)} run(s)")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except Exception as exc:  # the worker died (out of memory, killed): that run failed
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            outcome = Outcome(job.name, False, error=f"{type(exc).__name__}: {first_line}")
        left = len(pending)
        if outcome.ok:
            report.finished.append(outcome)
            on_line(f"done {outcome.name}: {_summary(outcome)} ({outcome.seconds:.1f}s); {left} left")
        else:
            report.failed.append(outcome)
            on_line(f"FAILED {outcome.name}: {outcome.error}; {left} left")
    report.wall_s = time.perf_counter() - start
    return report
