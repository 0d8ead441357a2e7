"""Aggregate trained checkpoints into the paper's tables.

Reads every ``config.json`` under a folder of runs (one checkpoint per
dataset x shots x seed, as docs/REPRODUCE.md lays them out), averages over
seeds first, then over datasets. Few-shot: accuracy per K. Base-to-novel:
base and novel accuracy, and the harmonic mean of the averaged base and novel
accuracies (the paper's convention), next to the mean of per-dataset HMs.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Callable, Hashable

from .evaluate import harmonic_mean

PAPER_FEW_SHOT = {1: 59.03, 2: 61.27, 4: 66.12, 8: 70.76, 16: 73.51}  # arXiv v1 README, 11-dataset mean
PAPER_BASE2NOVEL = {"base": 78.06, "novel": 75.97}  # arXiv v1; journal: 79.54 / 76.91


def collect(runs_dir: str | Path) -> list[dict]:
    rows = []
    for cfg_path in sorted(Path(runs_dir).rglob("config.json")):
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if cfg.get("method") not in ("biomed-dpt", "biomedcoop") or not cfg.get("metrics"):
            continue
        tr = cfg.get("training", {})
        rows.append({"preset": cfg.get("preset"), "protocol": tr.get("protocol", "few_shot"),
                     "shots": tr.get("shots"), "metrics": cfg["metrics"]})
    return rows


def _seed_mean(rows: list[dict], key: str, group: Callable[[dict], Hashable]) -> dict:
    """{group(row): {preset: mean over seeds (the rows of one group and preset) of metric `key`}}."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if key in r["metrics"]:
            acc[group(r)][r["preset"]].append(100.0 * float(r["metrics"][key]))
    return {g: {p: mean(v) for p, v in per.items()} for g, per in acc.items()}


def aggregate(runs_dir: str | Path) -> dict:
    rows = collect(runs_dir)
    few = [r for r in rows if r["protocol"] == "few_shot"]
    b2n = [r for r in rows if r["protocol"] == "base2novel"]
    out: dict = {"few_shot": {}, "base2novel": {}}
    for shots, per in sorted(_seed_mean(few, "accuracy", lambda r: r["shots"]).items(), key=lambda kv: kv[0] or 0):
        out["few_shot"][shots] = {"per_dataset": per, "mean": mean(per.values()), "n_datasets": len(per)}
    base = _seed_mean(b2n, "base_accuracy", lambda r: "b2n").get("b2n", {})
    novel = _seed_mean(b2n, "novel_accuracy", lambda r: "b2n").get("b2n", {})
    common = sorted(set(base) & set(novel))
    if common:
        b, n = mean(base[p] for p in common), mean(novel[p] for p in common)
        out["base2novel"] = {
            "per_dataset": {p: {"base": base[p], "novel": novel[p], "hm": harmonic_mean(base[p], novel[p])}
                            for p in common},
            "base": b, "novel": n, "hm": harmonic_mean(b, n),
            "mean_of_dataset_hm": mean(harmonic_mean(base[p], novel[p]) for p in common),
            "n_datasets": len(common),
        }
    return out


def render_markdown(result: dict) -> str:
    lines = []
    if result["few_shot"]:
        shots = list(result["few_shot"])
        presets = sorted({p for v in result["few_shot"].values() for p in v["per_dataset"]})
        lines += ["| dataset | " + " | ".join(f"K={k}" for k in shots) + " |",
                  "|---|" + "---|" * len(shots)]
        for p in presets:
            cells = [result["few_shot"][k]["per_dataset"].get(p) for k in shots]
            lines.append(f"| {p} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{result['few_shot'][k]['mean']:.2f}**" for k in shots) + " |")
        lines.append("| paper (v1) | " + " | ".join(f"{PAPER_FEW_SHOT.get(k, float('nan')):.2f}" for k in shots) + " |")
    if result["base2novel"]:
        r = result["base2novel"]
        lines += ["", "| dataset | base | novel | HM |", "|---|---|---|---|"]
        for p, v in r["per_dataset"].items():
            lines.append(f"| {p} | {v['base']:.2f} | {v['novel']:.2f} | {v['hm']:.2f} |")
        lines.append(f"| **mean** | **{r['base']:.2f}** | **{r['novel']:.2f}** | **{r['hm']:.2f}** |")
        pb, pn = PAPER_BASE2NOVEL["base"], PAPER_BASE2NOVEL["novel"]
        lines.append(f"| paper (v1) | {pb:.2f} | {pn:.2f} | {harmonic_mean(pb, pn):.2f} |")
    return "\n".join(lines) + "\n"
