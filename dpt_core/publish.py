"""Publish a folder of finished runs: one Hub model repo with a subfolder per run, and registry entries.

``publish RUNS --org ORG`` uploads every finished run (``config.json``,
``prompts.safetensors`` and its model card) of ``RUNS`` into ``ORG/<repo>``
under the run's own path (``few_shot/btmri/shots_16/seed_1``), with a zoo card
at the repo root listing each run's metrics and recipe, and adds the runs to
``checkpoints/registry.json`` as ``hf-hub:ORG/<repo>/<path>`` so the app's
picker offers them. ``dry_run`` does everything but the upload: the cards are
written locally and the registry entries too - nothing touches the network.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CARD_NAME, CONFIG_NAME, TENSORS_NAME, read_folder
from .hub import HF_PREFIX, push_runs, valid_repo_id
from .model_card import render_model_card
from .registry import REGISTRY_PATH, entry_for_run, write_registry_entries
from .sweep import run_is_finished

log = logging.getLogger(__name__)
DEFAULT_REPO = "biomed-dpt-zoo"
ZOO_CARD = "README.md"


class PublishError(ValueError):
    """Nothing to publish, or a bad repository name."""


@dataclass
class PublishResult:
    repo_id: str
    runs: list[str] = field(default_factory=list)  # run paths relative to RUNS
    entries: list[dict] = field(default_factory=list)
    registry: Path | None = None
    url: str | None = None  # None for a dry run


def finished_runs(runs_dir: str | Path) -> list[str]:
    """Relative paths (POSIX) of the finished runs under ``runs_dir``; hidden folders skipped."""
    root = Path(runs_dir)
    out = []
    for cfg in sorted(root.rglob(CONFIG_NAME)):
        rel = cfg.parent.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not run_is_finished(cfg.parent):
            continue
        out.append(rel.as_posix())
    return out


def render_zoo_card(repo_id: str, entries: list[dict]) -> str:
    """The repo's README: what the zoo is, then one table row per run with its metrics and recipe."""
    rows = []
    for e in entries:
        m, r = e["metrics"], e["recipe"]
        pct = {k: 100 * m.get(k, float("nan"))
               for k in ("accuracy", "base_accuracy", "novel_accuracy", "harmonic_mean")}
        if e["protocol"] == "base2novel":
            score = (f"base {pct['base_accuracy']:.2f} / novel {pct['novel_accuracy']:.2f} / "
                     f"HM {pct['harmonic_mean']:.2f}")
        else:
            score = f"{pct['accuracy']:.2f}"
        path = e["id"].removeprefix(f"{HF_PREFIX}{repo_id}/")
        rows.append(f"| `{path}` | {e['preset']} | {e['protocol']} | {e['shots']} | {e['seed']} | {score} | "
                    f"{r['mode']}, teacher {r['teacher']}, class {r['class_position']}, {r['epochs']} epochs |")
    return f"""---
library_name: biomed-dpt
tags: [biomed-dpt, prompt-tuning, biomedclip, medical-imaging, research-only]
---

# Biomed-DPT prompt checkpoints

Learned prompt contexts for a frozen BiomedCLIP backbone, one subfolder per run (protocol, dataset,
shots, seed). Each subfolder is a checkpoint with its own model card; load one with
`python -m dpt_core predict IMAGE --checkpoint hf-hub:{repo_id}/<subfolder>`.

**Research only: not a medical device, not for diagnosis.** Accuracies are on each dataset's
BiomedCoOp test split, in percent.

| run | dataset | protocol | shots | seed | accuracy | recipe |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


def publish(runs_dir: str | Path, org: str, repo: str = DEFAULT_REPO, public: bool = False, dry_run: bool = False,
            token: str | None = None, registry_path: str | Path = REGISTRY_PATH) -> PublishResult:
    """Upload the finished runs (unless ``dry_run``), write their cards and registry entries."""
    repo_id = f"{org}/{repo}"
    if not valid_repo_id(repo_id):
        raise PublishError(f"--org and --repo must form ORG/NAME, not {repo_id!r}")
    root = Path(runs_dir)
    runs = finished_runs(root)
    if not runs:
        raise PublishError(f"no finished runs (config.json with metrics) under {root}")
    entries = []
    for rel in runs:
        ckpt = read_folder(root / rel)  # refuse to publish something that would not load
        (root / rel / CARD_NAME).write_text(render_model_card(ckpt.config), encoding="utf-8")
        entries.append(entry_for_run(f"{HF_PREFIX}{repo_id}/{rel}", ckpt.config))
    (root / ZOO_CARD).write_text(render_zoo_card(repo_id, entries), encoding="utf-8")
    result = PublishResult(repo_id, runs, entries)
    if not dry_run:
        files = [ZOO_CARD] + [f"{rel}/{name}" for rel in runs for name in (CONFIG_NAME, TENSORS_NAME, CARD_NAME)]
        result.url = push_runs(root, repo_id, files, token=token, private=not public,
                               message=f"Publish {len(runs)} Biomed-DPT run(s)")
    result.registry = write_registry_entries(entries, registry_path)
    return result
