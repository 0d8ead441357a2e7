"""Teacher text features t~_c built from the prompt bank.

- ``mean`` (the released v1 code): uniform average of the class's L2-normalised
  description features, renormalised. A class with no description uses its
  templates instead.
- ``ranked`` (journal version, our design): prompts of both sources are ranked
  (``ranking``), the top-k of each source kept, and a small combination network
  (``combine``) weighs them; fitted on few-shot image features when given.

A teacher is computed once, without gradient, and cached by the trainer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .combine import CombinationNet, fit_combination, weighted_class_sum
from .prompt_bank import PromptBank
from .ranking import score_prompts, top_k_mask

TEACHER_MODES = ("mean", "ranked")
DEFAULT_TOP_K = {"templates": 4, "descriptions": 16}


@dataclass
class Teacher:
    mode: str
    bank: PromptBank
    weights: torch.Tensor  # [P]: zero for prompts that do not take part; sums to 1 per class
    scores: torch.Tensor | None = None  # [P] ranking scores ("ranked" only)
    net: CombinationNet | None = None
    fit_losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def features(self) -> torch.Tensor:
        """t~: [C, E], normalised."""
        s = weighted_class_sum(self.bank.features, self.weights.to(self.bank.features.device),
                               self.bank.class_index, self.bank.n_classes)
        return F.normalize(s, dim=-1)

    def to(self, device: torch.device | str) -> "Teacher":
        """A copy on ``device``; the CPU copy is the one that pickles across processes."""
        bank = replace(self.bank, features=self.bank.features.to(device))
        return replace(
            self, bank=bank, weights=self.weights.to(device),
            scores=None if self.scores is None else self.scores.to(device),
            net=None if self.net is None else copy.deepcopy(self.net).to(device),
            fit_losses=list(self.fit_losses),
        )


def mean_weights(bank: PromptBank) -> torch.Tensor:
    """v1: uniform over each class's descriptions, or over its templates if it has none."""
    w = torch.zeros(len(bank.prompts))
    for c in range(bank.n_classes):
        idx = bank.indices(c, "descriptions") or bank.indices(c, "templates")
        w[idx] = 1.0 / len(idx)
    return w.to(bank.features.device)


def build_teacher(
    bank: PromptBank,
    mode: str = "mean",
    image_features: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    logit_scale: float = 100.0,
    top_k: dict[str, int | None] | None = None,
    fit_steps: int = 200,
) -> Teacher:
    """The teacher of ``mode``; ``ranked`` uses the images (if any) to rank and to fit the weights."""
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher must be one of {TEACHER_MODES}, not {mode!r}")
    if mode == "mean":
        return Teacher("mean", bank, mean_weights(bank))
    scores = score_prompts(bank, image_features, labels)
    keep = top_k_mask(bank, scores, top_k or DEFAULT_TOP_K)
    device = bank.features.device
    net = CombinationNet(bank.features.shape[1]).to(device)
    losses: list[float] = []
    if image_features is not None and labels is not None and len(labels) > 0 and fit_steps > 0:
        losses = fit_combination(net, bank.features, scores, keep, bank.class_index,
                                 image_features.to(device), labels.to(device), float(logit_scale), steps=fit_steps)
    with torch.no_grad():
        weights = net(bank.features, scores, keep, bank.class_index, bank.n_classes)
    return Teacher("ranked", bank, weights.detach(), scores, net.eval(), losses)


def teacher_record(teacher: Teacher, top_k: dict[str, int | None] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """What a checkpoint stores of a teacher: config entry and tensors."""
    bank = teacher.bank
    record: dict = {"mode": teacher.mode}
    tensors = {"teacher.features": teacher.features().cpu()}
    if teacher.mode == "ranked":
        record["top_k"] = dict(top_k or DEFAULT_TOP_K)
        record["prompts"] = [
            {"class": bank.class_names[p.class_index], "source": p.source, "text": p.text,
             "weight": round(float(w), 6), "score": round(float(s), 6)}
            for p, w, s in zip(bank.prompts, teacher.weights.cpu(), teacher.scores.cpu())
        ]
        tensors["combine.query"] = teacher.net.query.detach().cpu()
        tensors["combine.score_gain"] = teacher.net.score_gain.detach().cpu()
    return record, tensors
