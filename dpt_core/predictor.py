"""Prediction with per-source probabilities and per-prompt contributions.

The prediction is the learned prompt's: logits = tau * f t^T. The two other
prompt sources only explain it:

- for source s (templates or descriptions) and class c, with weights w_ci that
  sum to 1 over the class's prompts of that source, the source's logit is
  sum_i w_ci * tau * <f, e_ci>, and each term is that prompt's *contribution*;
  ``softmax`` over classes gives the source's probabilities. Contributions of
  a class's prompts of one source therefore add up exactly to that source's logit.
- weights come from the checkpoint's teacher: uniform (``mean``), or the
  combination network's (``ranked``); prompts the ranking dropped have weight 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch
from PIL import Image

from .backbone import Backbone
from .calibration import DEFAULT_COVERAGE, Calibration, PredictionSet
from .checkpoint import PromptCheckpoint
from .combine import CombinationNet
from .descriptions import class_key, same_classes
from .errors import InputError
from .features import encode_images
from .limits import check_class_name_lengths
from .losses import scaled_logits
from .model import BiomedDPT
from .prompt_bank import SOURCES, build_prompt_bank
from .ranking import score_prompts, top_k_mask
from .teacher import DEFAULT_TOP_K
from .visual import VisualPromptConfig

log = logging.getLogger(__name__)
MAX_CLASSES = 100


@dataclass(frozen=True)
class PromptContribution:
    class_name: str
    source: str
    text: str
    weight: float
    contribution: float  # weight * tau * cos(image, prompt)

    def to_json(self) -> dict:
        return {"class": self.class_name, "source": self.source, "text": self.text,
                "weight": self.weight, "contribution": self.contribution}


@dataclass
class Prediction:
    class_names: list[str]
    logits: list[float]  # learned prompt, scaled by tau, class order
    probs: dict[str, float]
    sources: dict[str, dict[str, float] | None]  # "learned", "templates", "descriptions" -> probs
    source_logits: dict[str, list[float] | None]
    prompts: list[PromptContribution] = field(repr=False)  # every weighted prompt of every class
    calibrated_probs: dict[str, float] | None = None  # None: the checkpoint is not calibrated for these classes
    prediction_set: PredictionSet | None = None  # conformal set (or why none); None when not calibrated
    calibration_note: str = ""  # why there are no calibrated probabilities ("" when there are)
    calibration: Calibration | None = field(default=None, repr=False)  # to draw the set at another coverage

    @property
    def prediction(self) -> str:
        return max(self.probs, key=self.probs.get)

    def set_at(self, coverage: float) -> PredictionSet | None:
        """The conformal set at another of the calibration's coverages (None when not calibrated)."""
        if self.calibration is None or self.calibrated_probs is None:
            return None
        probs = torch.tensor([self.calibrated_probs[n] for n in self.class_names])
        return self.calibration.prediction_set(probs, self.class_names, coverage)

    def with_coverage(self, coverage: float) -> Prediction:
        """The same prediction with its set drawn at ``coverage``."""
        return replace(self, prediction_set=self.set_at(coverage)) if self.calibration is not None else self

    def top_prompts(self, class_name: str | None = None, k: int = 10, source: str | None = None) -> list[PromptContribution]:
        """Prompts of ``class_name`` (default: the predicted class), largest contribution first."""
        name = class_name or self.prediction
        rows = [p for p in self.prompts if p.class_name == name and (source is None or p.source == source)]
        return sorted(rows, key=lambda p: p.contribution, reverse=True)[:k]

    def to_json(self, top_k: int = 10) -> dict:
        return {
            "prediction": self.prediction,
            "probs": self.probs,
            "logits": self.logits,
            "calibrated_probs": self.calibrated_probs,
            "prediction_set": self.prediction_set.to_json() if self.prediction_set else None,
            "contributions": {
                "sources": self.sources,
                "prompts": [p.to_json() for p in self.top_prompts(k=top_k)],
            },
        }


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """Clean and validate a class list (the UI shows these messages as they are)."""
    if not all(isinstance(c, str) for c in class_names):  # e.g. JSON [{"a": 1}, null]: not names
        raise ValueError("class names must be text")
    names = [" ".join(c.split()) for c in class_names]
    check_class_name_lengths(names)
    if any(not n for n in names):
        raise InputError("class names cannot be empty")
    if len(names) < 2:
        raise InputError("at least two classes are needed to classify")
    if len(names) > MAX_CLASSES:
        raise InputError(f"at most {MAX_CLASSES} classes are supported, got {len(names)}")
    seen: dict[str, str] = {}
    for n in names:
        key = class_key(n)
        if key in seen:
            raise InputError(f"duplicate class: {seen[key]!r} and {n!r}")
        seen[key] = n
    return names


class Predictor:
    """One combination of backbone, checkpoint, classes and prompt bank; text features cached."""

    def __init__(
        self,
        backbone: Backbone,
        class_names: Sequence[str],
        templates: Sequence[str],
        descriptions: Mapping[str, Sequence[str]],
        template: str | None = None,
        n_ctx: int | None = None,
        checkpoint: PromptCheckpoint | None = None,
        visual: VisualPromptConfig = VisualPromptConfig(),
        class_position: str = "end",
    ):
        self.backbone = backbone
        self.class_names = check_class_names(class_names)
        self.checkpoint = checkpoint
        if checkpoint is not None:
            self.model = checkpoint.build_model(backbone, self.class_names)
        else:
            if template is None or n_ctx is None:
                raise ValueError("without a checkpoint, a template and n_ctx are needed")
            self.model = BiomedDPT(backbone, self.class_names, template, n_ctx, visual,
                                   class_position=class_position)
        self.model.eval()
        self.calibration, self.calibration_note = calibration_for(checkpoint, self.class_names, backbone.spec)
        self.bank = build_prompt_bank(backbone, self.class_names, templates or [self.model.prompt_learner.template],
                                      descriptions)
        with torch.no_grad():
            self.text_features = self.model.encode_prompts()  # [C, E]
        self.weights = self._source_weights()  # [P], sums to 1 per (class, source)
        # Per-request constants: per source, a [P, C] matrix that sums its prompts' contributions
        # into their classes; whether every class has a prompt of that source; the used prompts.
        device = backbone.device
        onehot = torch.nn.functional.one_hot(self.bank.class_index, self.bank.n_classes).float().to(device)
        self._source_sum = {s: onehot * torch.tensor([[p.source == s] for p in self.bank.prompts], device=device)
                            for s in SOURCES}
        self._weights = self.weights.tolist()
        self._used = [i for i, w in enumerate(self._weights) if w > 0]
        self._source_complete = {s: all(self.bank.indices(c, s) for c in range(self.bank.n_classes))
                                 for s in SOURCES}

    # ------------------------------------------------------------------ weights
    def _teacher_weights(self) -> torch.Tensor:
        """Per-prompt weights of the checkpoint's teacher over the whole bank (0 = not used).

        A class whose prompts are exactly those the checkpoint was trained with gets
        the stored weights; an edited class of a ``ranked`` checkpoint gets the
        checkpoint's combination network with text-only ranking; otherwise uniform.
        """
        bank, ckpt = self.bank, self.checkpoint
        teacher = (ckpt.config.get("teacher") if ckpt is not None else None) or {"mode": "mean"}
        stored = {(p["class"], p["text"]): float(p["weight"]) for p in teacher.get("prompts", [])}
        has_net = teacher.get("mode") == "ranked" and ckpt is not None and "combine.query" in ckpt.tensors
        net_weights = None
        w = torch.ones(len(bank.prompts))
        for c, name in enumerate(bank.class_names):
            idx = bank.indices(c)
            if stored and all((name, bank.prompts[i].text) in stored for i in idx):
                w[idx] = torch.tensor([stored[(name, bank.prompts[i].text)] for i in idx])
            elif has_net:
                if net_weights is None:
                    net_weights = self._net_weights(teacher)
                w[idx] = net_weights[idx]
        return w

    @torch.no_grad()
    def _net_weights(self, teacher: dict) -> torch.Tensor:
        """The checkpoint's combination network on this bank, ranked without images."""
        t = self.checkpoint.tensors
        net = CombinationNet(self.backbone.embed_dim)
        net.load_state_dict({"query": t["combine.query"], "score_gain": t["combine.score_gain"]})
        net.to(self.backbone.device)
        scores = score_prompts(self.bank)
        keep = top_k_mask(self.bank, scores, teacher.get("top_k") or DEFAULT_TOP_K)
        return net(self.bank.features, scores, keep, self.bank.class_index, self.bank.n_classes).cpu()

    def _source_weights(self) -> torch.Tensor:
        """Teacher weights renormalised within each (class, source); uniform where the teacher gave none."""
        raw = self._teacher_weights()
        out = torch.zeros_like(raw)
        for c in range(self.bank.n_classes):
            for s in SOURCES:
                idx = self.bank.indices(c, s)
                if not idx:
                    continue
                part = raw[idx]
                out[idx] = part / part.sum() if float(part.sum()) > 0 else torch.full((len(idx),), 1.0 / len(idx))
        return out.to(self.backbone.device)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return encode_images(self.model, list(images))

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image], coverage: float = DEFAULT_COVERAGE) -> list[Prediction]:
        return self.predict_features(self.image_features(images), coverage)

    @torch.no_grad()
    def predict_features(self, feats: torch.Tensor, coverage: float = DEFAULT_COVERAGE) -> list[Prediction]:
        """Predictions of normalised image features [B, E]; ``coverage``: of the conformal sets."""
        tau = self.backbone.logit_scale()
        logits = scaled_logits(feats, self.text_features, tau)  # [B, C]
        prompt_logits = scaled_logits(feats, self.bank.features, tau)  # [B, P]
        contrib = prompt_logits * self.weights[None]  # [B, P]
        per_source = {s: contrib @ self._source_sum[s] for s in SOURCES}  # [B, C] each
        names, prompts_of_bank = self.class_names, self.bank.prompts
        calibrated = self.calibration.probs(logits).cpu() if self.calibration is not None else None
        results = []
        for b in range(feats.shape[0]):
            learned = _probs(names, logits[b])
            sources: dict[str, dict[str, float] | None] = {"learned": learned}
            source_logits: dict[str, list[float] | None] = {"learned": logits[b].tolist()}
            for s in SOURCES:
                if self._source_complete[s]:
                    sources[s] = _probs(names, per_source[s][b])
                    source_logits[s] = per_source[s][b].tolist()
                else:
                    sources[s], source_logits[s] = None, None  # some class has no prompt of this source
            row = contrib[b].tolist()
            prompts = [PromptContribution(names[prompts_of_bank[i].class_index], prompts_of_bank[i].source,
                                          prompts_of_bank[i].text, self._weights[i], row[i]) for i in self._used]
            pred = Prediction(list(names), logits[b].tolist(), learned, sources, source_logits, prompts,
                              calibration_note=self.calibration_note)
            if calibrated is not None:
                pred.calibrated_probs = {n: float(p) for n, p in zip(names, calibrated[b])}
                pred.prediction_set = self.calibration.prediction_set(calibrated[b], names, coverage)
                pred.calibration = self.calibration
            results.append(pred)
        return results


def calibration_for(checkpoint: PromptCheckpoint | None, class_names: Sequence[str],
                    backbone_spec: str | None = None) -> tuple[Calibration | None, str]:
    """(the checkpoint's calibration, or None with the reason in words).

    A calibration holds only for the classes and the backbone it was fitted with:
    edited classes, or another backbone than the one the checkpoint records, make it void.
    """
    if checkpoint is None:
        return None, "not calibrated (the zero-shot prompt has no held-out images)"
    calibration = checkpoint.calibration
    if calibration is None:
        return None, "not calibrated (this checkpoint was saved without held-out images)"
    if not same_classes(class_names, checkpoint.class_names):
        return None, "not calibrated for these classes (the calibration holds for the checkpoint's own class list)"
    recorded = checkpoint.config.get("backbone")
    if backbone_spec and recorded and backbone_spec != recorded:
        return None, "not calibrated for this backbone (the calibration was fitted with another one)"
    return calibration, ""


def _probs(names: Sequence[str], logits: torch.Tensor) -> dict[str, float]:
    return {n: float(p) for n, p in zip(names, torch.softmax(logits.float(), dim=-1))}
