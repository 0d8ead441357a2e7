"""Biomed-DPT training loss (method.md section 4) as pure functions.

Every function takes L2-normalised features and returns tensors; nothing here
touches a model, so the same code serves training, evaluation and tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """lambda_L1 (semantic regularisation) and lambda_KL (distillation)."""

    l1: float = 0.0
    kl: float = 0.0


@dataclass
class LossParts:
    """The three weighted terms and their sum. Each is a scalar tensor."""

    ce: torch.Tensor
    l1: torch.Tensor
    kl: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.ce + self.l1 + self.kl

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in (("ce", self.ce), ("l1", self.l1), ("kl", self.kl), ("total", self.total))}


def scaled_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """tau * f t^T for normalised features: [B, D] x [C, D] -> [B, C]."""
    return logit_scale * image_features @ text_features.t()


def semantic_l1(student_text: torch.Tensor, teacher_text: torch.Tensor) -> torch.Tensor:
    """Mean over C x D of |t - t~| (unweighted)."""
    return (student_text - teacher_text).abs().mean()


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over all logits and divided by B*C.

    This is the reference's normalisation (a sum divided by the number of
    logits), not PyTorch's "batchmean"; there is no extra temperature.
    """
    log_p = F.log_softmax(student_logits, dim=-1)
    log_q = F.log_softmax(teacher_logits, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum() / student_logits.numel()


def dpt_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_text: torch.Tensor,
    teacher_text: torch.Tensor,
    weights: LossWeights,
) -> LossParts:
    """L = CE + lambda_L1 * mean|t - t~| + lambda_KL * KL(p~ || p) / (B*C)."""
    ce = F.cross_entropy(student_logits, labels)
    l1 = weights.l1 * semantic_l1(student_text, teacher_text)
    kl = weights.kl * distillation_kl(student_logits, teacher_logits)
    return LossParts(ce=ce, l1=l1, kl=kl)
