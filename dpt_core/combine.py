"""The combination network: learned weights over the ranked prompts of each class.

For prompt i of class c with feature e_ci and standardised ranking score z_ci:

    w_ci = softmax over the kept prompts of class c of ( <q, e_ci> + g * z_ci )

with a learned query q (initialised at 0) and gain g (initialised at 1), so
that before training the weights follow the ranking. The teacher is
normalise(sum_i w_ci e_ci). The network is fitted on cached few-shot image
features in a few hundred Adam steps (well under a second on a CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import scaled_logits


class CombinationNet(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.score_gain = nn.Parameter(torch.ones(()))

    def forward(
        self,
        features: torch.Tensor,  # [P, E] normalised prompt features
        scores: torch.Tensor,  # [P] ranking scores
        keep: torch.Tensor,  # [P] bool: prompts that take part
        class_index: torch.Tensor,  # [P] long
        n_classes: int,
    ) -> torch.Tensor:
        """Weights [P]: zero for dropped prompts, summing to 1 over each class's kept prompts."""
        keep = keep.to(features.device)
        class_index = class_index.to(features.device)
        z = standardise(scores.to(features.device), keep)
        logits = features @ self.query + self.score_gain * z
        logits = logits.masked_fill(~keep, float("-inf"))
        weights = torch.zeros_like(logits)
        for c in range(n_classes):
            sel = (class_index == c) & keep
            if bool(sel.any()):
                weights = weights.masked_scatter(sel, torch.softmax(logits[sel], dim=0))
        return weights


def standardise(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Scores over the kept prompts scaled to unit spread, so the gain is comparable across banks."""
    kept = scores[keep]
    spread = kept.std() if kept.numel() > 1 else torch.ones((), device=scores.device)
    return (scores - kept.mean()) / (spread + 1e-6)


def weighted_class_sum(features: torch.Tensor, weights: torch.Tensor, class_index: torch.Tensor, n_classes: int) -> torch.Tensor:
    """sum_i w_ci e_ci per class, [C, E] (not normalised)."""
    out = torch.zeros(n_classes, features.shape[1], device=features.device, dtype=features.dtype)
    return out.index_add(0, class_index.to(features.device), features * weights[:, None])


def fit_combination(
    net: CombinationNet,
    features: torch.Tensor,
    scores: torch.Tensor,
    keep: torch.Tensor,
    class_index: torch.Tensor,
    image_features: torch.Tensor,  # [M, E] normalised
    labels: torch.Tensor,  # [M]
    logit_scale: float,
    steps: int = 200,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> list[float]:
    """Fit q and g so that the teacher built from the weights classifies the images; returns losses."""
    n_classes = int(class_index.max()) + 1
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    f = F.normalize(image_features.detach().float(), dim=-1)
    labels = labels.to(f.device)
    losses = []
    for _ in range(steps):
        w = net(features, scores, keep, class_index, n_classes)
        teacher = F.normalize(weighted_class_sum(features, w, class_index, n_classes), dim=-1)
        loss = F.cross_entropy(scaled_logits(f, teacher, logit_scale), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
