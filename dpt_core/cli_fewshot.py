"""``python -m dpt_core train ... --holdout F [--json]``: the app's few-shot run from the command line.

The same code as the Few-shot tab (``dpt_core.fewshot.run_fewshot``): every image encoded
once, a share ``F`` of each class held out (every class needs at least 2 images), fast-mode
training, then the adapted and the zero-shot prompt scored on the held-out images and the
calibration fitted on them (stored in the checkpoint). With ``--json`` one object on stdout:
``{"checkpoint": DIR, "holdout": {"n_images", "adapted": {"accuracy", "per_class"},
"zero_shot": {"accuracy", "per_class"}}, "metrics": {...}, "calibration": {...}}``.
"""
from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import torch

from .backbone import Backbone
from .checkpoint import read_folder
from .data import LabelledImages
from .errors import InputError
from .fewshot import FewShotResult, Status, TrainSettings, run_fewshot
from .losses import LossWeights
from .workflow import ClassSetup

CLI_HOLDOUT_MIN = 2  # the command line asks for the check explicitly: two images per class suffice


def settings_from_args(args: Namespace, weights: LossWeights) -> TrainSettings:
    """The run's settings from ``train``'s flags (the CLI's defaults, not the tab's)."""
    if args.exact:
        raise InputError("--holdout runs the fast mode; drop --exact")
    if args.protocol != "few-shot":
        raise InputError("--holdout works with --protocol few-shot")
    if not 0.0 < args.holdout < 1.0:
        raise InputError(f"--holdout must be a fraction between 0 and 1, not {args.holdout}")
    return TrainSettings(epochs=args.epochs, views=args.views, lr=args.lr, batch_size=args.batch_size,
                         l1=weights.l1, kl=weights.kl, teacher=args.teacher, layout=args.visual_layout,
                         seed=args.seed, holdout=args.holdout, holdout_min=CLI_HOLDOUT_MIN).checked()


def _progress(status: Status) -> None:
    if status.phase != "training":  # one line per phase; epochs are printed as they complete
        print(status.text, file=sys.stderr)


def train_with_holdout(args: Namespace, backbone: Backbone, setup: ClassSetup, data: LabelledImages,
                       weights: LossWeights) -> int:
    """Run, save the checkpoint under ``--out``, print its folder (or the JSON)."""
    settings = settings_from_args(args, weights)
    counts = torch.bincount(data.labels, minlength=len(setup.class_names))
    if int(counts.min()) < CLI_HOLDOUT_MIN:  # asked for explicitly: no silent run without the check
        raise InputError(f"a held-out check needs at least {CLI_HOLDOUT_MIN} images in every class")
    description = args.data_description or "Not described by the person who trained it."
    description = f"{description} ({len(data)} images, {args.shots} shots per class, from {Path(args.data).name}.)"
    result = run_fewshot(backbone, setup, data, settings, args.out, description, report=_progress)
    if result.check is None:
        print(result.no_check_reason, file=sys.stderr)
    else:
        print(_summary(result), file=sys.stderr)
    if args.json:
        obj = {"checkpoint": str(result.folder), "holdout": result.check.to_json() if result.check else None,
               "metrics": read_folder(result.folder).config.get("metrics", {}),
               "calibration": result.calibration.to_config() if result.calibration else None}
        json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(str(result.folder))
    return 0


def _summary(result: FewShotResult) -> str:
    c = result.check
    return (f"held-out check on {c.n_images} images: adapted {c.adapted.accuracy:.3f}, "
            f"zero-shot {c.zero_shot.accuracy:.3f} ({result.epochs_completed} epochs, "
            f"{result.n_train} training images)")
