"""The model card (README.md) written next to every checkpoint."""
from __future__ import annotations

import json
from typing import Any

PAPER = ("Peng, Hu, Liu, Zhang. Biomed-DPT: Dual Modality Prompt Tuning for Biomedical "
         "Vision-Language Models. IEEE JBHI 2026 (doi 10.1109/JBHI.2026.3686818); arXiv 2505.05189.")


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    if not metrics:
        return "No held-out evaluation was recorded for this checkpoint."
    lines = []
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, (dict, list)):
            value = "`" + json.dumps(value) + "`"
        lines.append(f"- **{key}**: {value}")
    return "\n".join(lines)


def _fmt_recipe(config: dict[str, Any]) -> str:
    """The run's recipe in words (what ``aggregate`` groups by, and what reproduces it)."""
    tr, data = config.get("training") or {}, config.get("data") or {}
    if "protocol" not in tr:
        return ""
    shots = tr.get("shots")
    lines = [
        f"- Protocol: {tr.get('protocol')}" + (f", {shots} shots per class" if shots else "")
        + (f", seed {tr.get('seed')}" if tr.get("seed") is not None else ""),
        f"- Mode: {tr.get('mode', '-')}; epochs {tr.get('epochs', '-')}, batch {tr.get('batch_size', '-')}, "
        f"{tr.get('steps_per_epoch', '-')} steps per epoch, lr {tr.get('lr', '-')}",
        f"- Teacher: {(config.get('teacher') or {}).get('mode', 'mean')}; class position "
        f"{config.get('class_token_position', 'end')}",
    ]
    if data.get("split_file"):
        lines.append(f"- Split file: `{data['split_file']}` (sha256 `{data.get('split_sha256', '-')}`), "
                     f"{len(data.get('train_images') or [])} training images listed in config.json")
    return "\n## Recipe\n\n" + "\n".join(lines) + "\n"

def _fmt_calibration(block: dict[str, Any] | None) -> str:
    if not block:
        return "Not calibrated: no held-out images were used to fit a temperature or prediction sets."
    sets = ", ".join(f"{float(c):.0%}" for c, t in block.get("thresholds", {}).items() if t is not None)
    return (f"Temperature {block.get('temperature', 0):.3g} fitted on {block.get('n_calibration')} held-out images "
            f"({block.get('source') or 'source not recorded'}); expected calibration error on them "
            f"{block.get('ece_before', 0):.3f} before, {block.get('ece_after', 0):.3f} after. "
            f"Conformal prediction sets available at: {sets or 'none (too few calibration images)'}. "
            "So few images give a rough calibration, not a validated one.")


def render_model_card(config: dict[str, Any]) -> str:
    """Markdown card: intended use, data, metrics, method, and how to load it."""
    random_note = (
        "\n> **The backbone this was trained on has random weights.** Its predictions are meaningless; "
        "it exists for testing only.\n" if config.get("backbone_random_weights") else ""
    )
    classes = ", ".join(config.get("class_names", []))
    teacher = config.get("teacher", {}).get("mode", "mean")
    data = config.get("data_description") or "Not described by the person who trained it."
    return f"""---
library_name: biomed-dpt
tags: [biomed-dpt, prompt-tuning, biomedclip, medical-imaging, research-only]
base_model: {config.get('backbone', '').removeprefix('hf-hub:')}
---

# Biomed-DPT prompt checkpoint ({config.get('preset') or 'custom classes'})

Learned text context ({config.get("n_ctx")} tokens) for a frozen BiomedCLIP-style backbone (named below),
trained with Biomed-DPT prompt tuning (method `{config.get('method')}`, teacher `{teacher}`).
Only prompt tensors are stored here; the backbone is loaded separately.
{random_note}
## Intended use

Research on prompt learning for medical vision-language models. **This is not a medical device
and must not be used for diagnosis, triage or any clinical decision.** Predictions of few-shot
prompt learners are unstable, depend on the acquisition protocol and population, and have not
been validated clinically.

## Details

- Backbone: `{config.get('backbone')}` (revision: {config.get('backbone_revision') or 'unknown'})
- Modality / organ: {config.get('modality') or '-'} / {config.get('organ') or '-'}
- Classes (label order): {classes}
- Template: `{config.get('template')}`; context replaces the first {config.get('n_ctx')} word-pieces
- Visual prompts: {config.get('visual_prompts')}
- Loss weights: {config.get('loss_weights')}
- Training settings: `{json.dumps({k: v for k, v in (config.get('training') or {}).items() if k != 'history'})}`

## Training data

{data}

## Metrics

{_fmt_metrics(config.get('metrics', {}))}
{_fmt_recipe(config)}


## Calibration

{_fmt_calibration(config.get('calibration'))}

## How to use

```bash
python -m dpt_core predict scan.png --preset {config.get('preset') or 'NAME'} --checkpoint PATH_OR_HUB_ID --json
```

## Method

{PAPER}
"""
