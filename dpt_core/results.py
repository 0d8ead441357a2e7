"""Aggregate trained checkpoints into the paper's tables, one table per recipe.

Reads every ``config.json`` under a folder of runs (``sweep`` writes
``RUNS/<protocol>/<preset>/shots_<K>/seed_<S>/``; any nesting works), groups the
runs by recipe - protocol, mode (exact | fast), teacher, class position and
backbone - so that different recipes are never averaged together, then
averages over seeds first, then over datasets. Few-shot: accuracy per K and
the average over K. Base-to-novel: base and novel accuracy, and the harmonic
mean of the averaged base and novel accuracies (the paper's convention), next
to the mean of per-dataset HMs.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Callable, Hashable

from .evaluate import harmonic_mean

RECIPE_KEYS = ("protocol", "mode", "epochs", "batch_size", "lr", "teacher", "class_position", "backbone")
PAPER_FEW_SHOT = {1: 59.03, 2: 61.27, 4: 66.12, 8: 70.76, 16: 73.51}  # arXiv v1 README, 11-dataset mean
PAPER_BASE2NOVEL = {"base": 78.06, "novel": 75.97}  # arXiv v1; journal: 79.54 / 76.91


def recipe_of(cfg: dict) -> dict:
    """The settings that must agree for two runs to be averaged together."""
    tr = cfg.get("training") or {}
    return {"protocol": tr.get("protocol", "few_shot"), "mode": tr.get("mode", "unknown"),
            "epochs": tr.get("epochs"), "batch_size": tr.get("batch_size"), "lr": tr.get("lr"),
            "teacher": (cfg.get("teacher") or {}).get("mode", "mean"),
            "class_position": cfg.get("class_token_position") or tr.get("class_position") or "end",
            "backbone": cfg.get("backbone", "unknown")}


def collect(runs_dir: str | Path) -> list[dict]:
    """One row per run with metrics (hidden folders - unfinished sweep runs - are ignored)."""
    root = Path(runs_dir)
    rows = []
    for cfg_path in sorted(root.rglob("config.json")):
        if any(part.startswith(".") for part in cfg_path.relative_to(root).parts):
            continue
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if cfg.get("method") not in ("biomed-dpt", "biomedcoop") or not cfg.get("metrics"):
            continue
        tr = cfg.get("training", {})
        recipe = recipe_of(cfg)
        rows.append({"preset": cfg.get("preset"), "protocol": recipe["protocol"], "recipe": recipe,
                     "shots": tr.get("shots"), "metrics": cfg["metrics"]})
    return rows


def _seed_mean(rows: list[dict], key: str, group: Callable[[dict], Hashable]) -> dict:
    """{group(row): {preset: mean over seeds (the rows of one group and preset) of metric `key`}}."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if key in r["metrics"]:
            acc[group(r)][r["preset"]].append(100.0 * float(r["metrics"][key]))
    return {g: {p: mean(v) for p, v in per.items()} for g, per in acc.items()}


def _few_shot_table(rows: list[dict]) -> dict:
    table: dict = {}
    for shots, per in sorted(_seed_mean(rows, "accuracy", lambda r: r["shots"]).items(), key=lambda kv: kv[0] or 0):
        table[shots] = {"per_dataset": per, "mean": mean(per.values()), "n_datasets": len(per)}
    if not table:
        return {}
    presets = sorted({p for v in table.values() for p in v["per_dataset"]})
    per_avg = {p: mean(v["per_dataset"][p] for v in table.values() if p in v["per_dataset"]) for p in presets}
    return {"shots": table, "average_over_k": {"per_dataset": per_avg, "mean": mean(v["mean"] for v in table.values())}}


def _base2novel_table(rows: list[dict]) -> dict:
    base = _seed_mean(rows, "base_accuracy", lambda r: "b2n").get("b2n", {})
    novel = _seed_mean(rows, "novel_accuracy", lambda r: "b2n").get("b2n", {})
    common = sorted(set(base) & set(novel))
    if not common:
        return {}
    b, n = mean(base[p] for p in common), mean(novel[p] for p in common)
    return {
        "per_dataset": {p: {"base": base[p], "novel": novel[p], "hm": harmonic_mean(base[p], novel[p])}
                        for p in common},
        "base": b, "novel": n, "hm": harmonic_mean(b, n),
        "mean_of_dataset_hm": mean(harmonic_mean(base[p], novel[p]) for p in common),
        "n_datasets": len(common),
    }


def aggregate(runs_dir: str | Path) -> dict:
    """``{"groups": [{"recipe", "n_runs", "few_shot" | "base2novel"}]}``, accuracies in percent."""
    by_recipe: dict = defaultdict(list)
    for r in collect(runs_dir):
        by_recipe[tuple(r["recipe"][k] for k in RECIPE_KEYS)].append(r)
    groups = []
    for key in sorted(by_recipe, key=lambda k: tuple(str(v) for v in k)):
        rows = by_recipe[key]
        recipe = dict(zip(RECIPE_KEYS, key))
        table = _few_shot_table(rows) if recipe["protocol"] == "few_shot" else _base2novel_table(rows)
        if table:
            groups.append({"recipe": recipe, "n_runs": len(rows), recipe["protocol"]: table})
    return {"groups": groups}


def _recipe_title(recipe: dict) -> str:
    return (f"### {recipe['protocol']} - {recipe['mode']} mode, teacher {recipe['teacher']}, "
            f"class position {recipe['class_position']}, backbone `{recipe['backbone']}`")


def _render_few_shot(t: dict) -> list[str]:
    shots = list(t["shots"])
    presets = sorted({p for v in t["shots"].values() for p in v["per_dataset"]})
    avg = t["average_over_k"]
    lines = ["| dataset | " + " | ".join(f"K={k}" for k in shots) + " | avg |", "|---|" + "---|" * (len(shots) + 1)]
    for p in presets:
        cells = [t["shots"][k]["per_dataset"].get(p) for k in shots]
        lines.append(f"| {p} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
                     + f" | {avg['per_dataset'][p]:.2f} |")
    lines.append("| **mean** | " + " | ".join(f"**{t['shots'][k]['mean']:.2f}**" for k in shots)
                 + f" | **{avg['mean']:.2f}** |")
    paper = [PAPER_FEW_SHOT.get(k) for k in shots]
    paper_avg = mean(PAPER_FEW_SHOT.values()) if set(shots) == set(PAPER_FEW_SHOT) else None
    lines.append("| paper (v1) | " + " | ".join("-" if v is None else f"{v:.2f}" for v in paper)
                 + f" | {'-' if paper_avg is None else f'{paper_avg:.2f}'} |")
    return lines


def _render_base2novel(r: dict) -> list[str]:
    lines = ["| dataset | base | novel | HM |", "|---|---|---|---|"]
    for p, v in r["per_dataset"].items():
        lines.append(f"| {p} | {v['base']:.2f} | {v['novel']:.2f} | {v['hm']:.2f} |")
    lines.append(f"| **mean** | **{r['base']:.2f}** | **{r['novel']:.2f}** | **{r['hm']:.2f}** |")
    pb, pn = PAPER_BASE2NOVEL["base"], PAPER_BASE2NOVEL["novel"]
    lines.append(f"| paper (v1) | {pb:.2f} | {pn:.2f} | {harmonic_mean(pb, pn):.2f} |")
    return lines


def render_markdown(result: dict) -> str:
    """One markdown table per recipe, with the paper's numbers below each."""
    lines: list[str] = []
    for g in result["groups"]:
        if lines:
            lines.append("")
        lines += [_recipe_title(g["recipe"]), ""]
        lines += _render_few_shot(g["few_shot"]) if "few_shot" in g else _render_base2novel(g["base2novel"])
    return "\n".join(lines) + "\n"
