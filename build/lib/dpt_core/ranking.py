"""Ranking of the dual prompts (journal version, this project's design; method.md section 6).

Every prompt of class c is scored by how well it separates c from the other
classes:

- with labelled image features: mean similarity to the images of its own
  class minus the highest mean similarity to the images of another class;
- without images (pure zero-shot): the same margin measured against the
  class centroids of the prompt bank (agreement with its own class's mean
  embedding minus agreement with the closest other class's).

Scores are then used to keep the top-k prompts of each source per class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .prompt_bank import SOURCES, PromptBank


def class_centroids(bank: PromptBank) -> torch.Tensor:
    """Normalised mean prompt feature of each class, [C, E]."""
    idx = bank.class_index.to(bank.features.device)
    sums = torch.zeros(bank.n_classes, bank.features.shape[1], device=bank.features.device)
    sums.index_add_(0, idx, bank.features)
    return F.normalize(sums, dim=-1)


def _margin(per_class_sim: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """[P, C] similarities, [P] own class -> own minus best other (C = 1: own alone)."""
    own_sim = per_class_sim.gather(1, own[:, None]).squeeze(1)
    if per_class_sim.shape[1] == 1:
        return own_sim
    others = per_class_sim.scatter(1, own[:, None], float("-inf"))
    return own_sim - others.max(dim=1).values


@torch.no_grad()
def score_prompts(
    bank: PromptBank,
    image_features: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Discrimination score of every prompt, [P] (higher separates its class better)."""
    own = bank.class_index.to(bank.features.device)
    if image_features is not None and labels is not None and len(labels) > 0:
        labels = labels.to(bank.features.device)
        counts = torch.bincount(labels, minlength=bank.n_classes)
        if bool((counts > 0).all()):
            f = F.normalize(image_features.to(bank.features.device).float(), dim=-1)
            sims = bank.features @ f.t()  # [P, M]
            per_class = torch.zeros(len(bank.prompts), bank.n_classes, device=f.device)
            per_class.index_add_(1, labels, sims)
            return _margin(per_class / counts, own)
    return _margin(bank.features @ class_centroids(bank).t(), own)


def top_k_mask(bank: PromptBank, scores: torch.Tensor, k: dict[str, int | None]) -> torch.Tensor:
    """Keep the k best prompts of each source for each class (k None: keep all). [P] bool."""
    keep = torch.zeros(len(bank.prompts), dtype=torch.bool)
    for c in range(bank.n_classes):
        for source in SOURCES:
            idx = bank.indices(c, source)
            if not idx:
                continue
            n = len(idx) if k.get(source) is None else min(len(idx), int(k[source]))
            order = scores[idx].cpu().argsort(descending=True)[:n]
            keep[torch.tensor(idx)[order]] = True
    return keep
