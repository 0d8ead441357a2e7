"""Evaluation: accuracy, per-class accuracy, confusion matrix, loss parts; base-to-novel helpers.

Loss parts are those of ``losses.dpt_loss`` (each lambda-weighted), computed
over all images as one batch with the text tower in eval mode (no dropout).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import LabelledImages
from .features import encode_images
from .losses import LossWeights, dpt_loss, scaled_logits
from .model import BiomedDPT


@dataclass
class Evaluation:
    accuracy: float  # fraction in [0, 1]
    per_class: dict[str, float | None]  # None for a class without test images
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    loss: dict[str, float]  # ce, l1, kl, total
    n: int


@torch.no_grad()
def evaluate_features(
    model: BiomedDPT,
    image_features: torch.Tensor,
    labels: torch.Tensor,
    teacher_text: torch.Tensor,
    weights: LossWeights,
) -> Evaluation:
    """Metrics from cached, normalised image features [N, E] and labels [N]."""
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    device = model.device
    feats, labels = image_features.to(device), labels.to(device)
    out = model(image_features=feats)
    teacher_logits = scaled_logits(feats, teacher_text.to(device), model.logit_scale())
    parts = dpt_loss(out.logits, teacher_logits, labels, out.text_features, teacher_text.to(device), weights)
    pred = out.logits.argmax(dim=1)
    c = len(model.class_names)
    cm = torch.zeros(c, c, dtype=torch.long)
    cm.index_put_((labels.cpu(), pred.cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    per_class = {
        name: (float(cm[i, i]) / float(cm[i].sum()) if int(cm[i].sum()) else None)
        for i, name in enumerate(model.class_names)
    }
    return Evaluation(
        accuracy=float((pred == labels).float().mean()),
        per_class=per_class,
        confusion_matrix=cm.tolist(),
        loss=parts.as_floats(),
        n=int(len(labels)),
    )


def evaluate(model: BiomedDPT, data: LabelledImages, teacher_text: torch.Tensor, weights: LossWeights) -> Evaluation:
    return evaluate_features(model, encode_images(model, data.images), data.labels, teacher_text, weights)


def harmonic_mean(a: float, b: float) -> float:
    """The base-to-novel summary (the reference script prints the arithmetic mean by mistake)."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def base_novel_split(n_classes: int) -> tuple[list[int], list[int]]:
    """Labels 0..ceil(C/2)-1 are base, the rest novel."""
    n_base = math.ceil(n_classes / 2)
    return list(range(n_base)), list(range(n_base, n_classes))
