"""The held-out check of a training run, and the calibration fitted on the same images.

Images held out of training score the adapted prompt against the zero-shot
prompt, and give the temperature and conformal thresholds stored with the
checkpoint (``calibration``). ``train --holdout F`` uses it; sweeps calibrate on
the validation few-shot split drawn with min(K, 4) images per class, as the
reference draws its validation set (``validation_records``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbone import Backbone
from .calibration import Calibration, calibrate, calibrate_features
from .checkpoint import read_folder, write_checkpoint
from .data import DataError, ImageRecord, LabelledImages, few_shot
from .errors import InputError
from .evaluate import Evaluation, evaluate_features
from .features import encode_images
from .losses import LossWeights
from .model import BiomedDPT
from .teacher import Teacher
from .workflow import holdout_split

VALIDATION_SHOTS_CAP = 4  # the reference's validation split: min(K, 4) images per class


@dataclass
class HeldOutCheck:
    adapted: Evaluation
    zero_shot: Evaluation
    calibration: Calibration

    def metrics(self) -> dict:
        """What the checkpoint's ``metrics`` records (accuracies as fractions)."""
        return {
            "heldout_images": self.adapted.n,
            "heldout_accuracy": round(self.adapted.accuracy, 4),
            "zero_shot_heldout_accuracy": round(self.zero_shot.accuracy, 4),
            "heldout_per_class": self.adapted.per_class,
            "heldout_ece_before": round(self.calibration.ece_before, 4),
            "heldout_ece_after": round(self.calibration.ece_after, 4),
        }


def split_heldout(data: LabelledImages, fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """(training part, held-out part): ``fraction`` of each class (at least one image) held out."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--holdout must be a fraction between 0 and 1, not {fraction}")
    split = holdout_split(data.labels, fraction, min_per_class=2, seed=seed)
    if split is None:
        raise DataError("a held-out check needs at least 2 images in every class")
    train_idx, held_idx = split
    return data.subset(train_idx), data.subset(held_idx)


def check_heldout(model: BiomedDPT, zero_shot: BiomedDPT, held: LabelledImages, teacher: Teacher,
                  weights: LossWeights, source: str = "held-out images") -> HeldOutCheck:
    """Adapted vs zero-shot prompt on ``held`` (never trained on), and the calibration fitted on it."""
    feats = encode_images(model, held.images)
    return check_heldout_features(model, zero_shot, feats, held.labels, teacher, weights, source)


def check_heldout_features(model: BiomedDPT, zero_shot: BiomedDPT, features: torch.Tensor, labels: torch.Tensor,
                           teacher: Teacher, weights: LossWeights, source: str = "held-out images") -> HeldOutCheck:
    """``check_heldout`` on image features [N, E] already encoded."""
    feats, text = features.to(model.device), teacher.features()
    return HeldOutCheck(
        adapted=evaluate_features(model, feats, labels, text, weights),
        zero_shot=evaluate_features(zero_shot, feats, labels, text, weights),
        calibration=calibrate_features(model, feats, labels, source),
    )


def validation_records(val_records: Sequence[ImageRecord], shots: int, seed: int) -> list[ImageRecord]:
    """A sweep's calibration images: min(K, 4) per class of the validation split, drawn per seed."""
    return few_shot(val_records, min(shots, VALIDATION_SHOTS_CAP) if shots > 0 else VALIDATION_SHOTS_CAP, seed)


def calibrate_checkpoint(folder: str | Path, backbone: Backbone, images: LabelledImages,
                         source: str = "validation images") -> Calibration:
    """Calibrate a saved checkpoint on labelled ``images`` and store the block in its config.json.

    For runs whose held-out images are separate from training (a sweep's validation
    split, ``validation_records``); the images must use the checkpoint's class order.
    """
    ckpt = read_folder(folder)
    if list(images.class_names) != ckpt.class_names:
        raise InputError(f"the images' classes {images.class_names} are not the checkpoint's {ckpt.class_names}")
    model = ckpt.build_model(backbone).eval()
    result = calibrate(model, images, source)
    ckpt.config["calibration"] = result.to_config()
    write_checkpoint(ckpt, folder)
    return result
