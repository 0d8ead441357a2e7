"""Prompt learning: ``fit`` trains the text context ``ctx`` and nothing else.

Two modes share the loop, the loss and the schedule:

- ``exact``: the paper's recipe step by step - every step draws a fresh
  RandomResizedCrop of each image and runs the image tower on it.
- ``fast`` (default): the image path has no trainable parameter (the visual
  prompts are fixed zeros), so the features of ``views`` augmented crops per
  image are computed once; each epoch uses view ``epoch % views`` of every
  image and a step runs only the text tower. Batches, schedule, loss and the
  BERT dropout are those of the exact mode. With ``center_view`` the first view
  is the plain centre crop, whose features the caller usually has already
  (they feed the ranked teacher and the held-out check): one image pass less.

Recipe (method.md section 5): SGD lr 0.0025, momentum 0.9, weight decay 5e-4,
one warm-up epoch at a constant 1e-5, then cosine over the epochs; batch 4;
fp32; the last epoch's context is kept. The frozen BERT runs with its dropout
active during steps (``text_dropout``), as the reference's train mode does,
through a weight-sharing copy so that the shared backbone stays in eval mode.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .data import LabelledImages, eval_transform, train_transform
from .features import encode_images
from .losses import LossWeights, dpt_loss
from .model import BiomedDPT
from .teacher import Teacher

log = logging.getLogger(__name__)
MODES = ("fast", "exact")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # few-shot protocol: 100; base-to-novel: 50
    batch_size: int = 4
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant-lr warm-up before the cosine schedule
    warmup_lr: float = 1e-5
    mode: str = "fast"  # "fast" (cached image features) or "exact" (fresh augmentation every step)
    views: int = 8  # fast mode: augmented crops cached per image
    center_view: bool = False  # fast mode: view 0 is the un-augmented centre crop (saves one image pass)
    text_dropout: bool = True  # BERT dropout on during steps, as in the reference
    seed: int = 1
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.views < 1:
            raise ValueError("epochs, batch_size and views must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of a (0-based) epoch: constant warm-up, then cosine from ``lr`` over all epochs."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))


@dataclass
class StepInfo:
    epoch: int  # 0-based
    epochs: int
    step: int  # 0-based within the epoch
    steps_per_epoch: int
    loss: dict[str, float]
    lr: float
    elapsed_s: float


@dataclass
class FitResult:
    history: list[dict]  # one entry per completed epoch: epoch, lr, mean loss parts
    stopped: bool  # True when should_stop() ended training early
    seconds: float
    feature_seconds: float  # fast mode: caching the views; exact mode: 0


def fit(
    model: BiomedDPT,
    data: LabelledImages,
    teacher: Teacher,
    config: TrainConfig = TrainConfig(),
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    eval_features: torch.Tensor | None = None,
) -> FitResult:
    """Train ``model.prompt_learner.ctx`` on ``data`` against ``teacher``.

    ``eval_features``: centre-crop features of ``data`` if already computed
    (used as view 0 when ``config.center_view``).

    Cooperative cancel: ``should_stop`` is polled before every step; when it
    fires, the context of the best completed epoch (lowest mean loss) is
    restored - or the initial one if no epoch completed - and ``stopped`` is set.
    """
    if len(data) == 0:
        raise ValueError("no training images")
    start = time.perf_counter()
    device = model.device
    teacher_text = teacher.features().to(device)
    labels = data.labels.to(device)
    params = [model.prompt_learner.ctx]
    optim = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    text_encoder = model.text_encoder.with_dropout() if config.text_dropout else model.text_encoder
    stop = should_stop or (lambda: False)
    history: list[dict] = []
    best = (math.inf, model.prompt_learner.ctx.detach().clone())
    stopped = False
    feature_seconds = 0.0

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        views = None
        if config.mode == "fast":
            t0 = time.perf_counter()
            try:
                views = _cache_views(model, data, config, stop, eval_features)  # [V, N, E]
            except InterruptedError:
                return FitResult(history, True, time.perf_counter() - start, time.perf_counter() - t0)
            feature_seconds = time.perf_counter() - t0
        aug = train_transform(model.backbone)
        n = len(data)
        steps = math.ceil(n / config.batch_size)
        for epoch in range(config.epochs):
            lr = lr_at(config, epoch)
            for g in optim.param_groups:
                g["lr"] = lr
            order = torch.randperm(n, generator=gen)
            sums = {"ce": 0.0, "l1": 0.0, "kl": 0.0, "total": 0.0}
            for step in range(steps):
                if stop():
                    stopped = True
                    break
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                if views is not None:
                    feats = views[epoch % config.views, idx.to(device)]
                else:
                    with torch.no_grad():
                        batch = torch.stack([aug(data.images[int(i)]) for i in idx]).to(device)
                        feats = model.encode_image(batch)
                out = model(image_features=feats, text_encoder=text_encoder)
                teacher_logits = model.logit_scale() * feats @ teacher_text.t()
                parts = dpt_loss(out.logits, teacher_logits, labels[idx.to(device)], out.text_features,
                                 teacher_text, config.loss_weights)
                optim.zero_grad(set_to_none=True)
                parts.total.backward()
                optim.step()
                values = parts.as_floats()
                for k in sums:
                    sums[k] += values[k]
                if on_step is not None:
                    on_step(StepInfo(epoch, config.epochs, step, steps, values, lr, time.perf_counter() - start))
            if stopped:
                break
            mean = {k: v / steps for k, v in sums.items()}
            history.append({"epoch": epoch + 1, "lr": lr, **mean})
            if mean["total"] < best[0]:
                best = (mean["total"], model.prompt_learner.ctx.detach().clone())
    if stopped:
        with torch.no_grad():
            model.prompt_learner.ctx.copy_(best[1])
    return FitResult(history, stopped, time.perf_counter() - start, feature_seconds)


def _cache_views(model: BiomedDPT, data: LabelledImages, config: TrainConfig, stop: Callable[[], bool],
                 eval_features: torch.Tensor | None) -> torch.Tensor:
    """[V, N, E] normalised features: RandomResizedCrop views of every image (+ the centre crop first)."""
    aug = train_transform(model.backbone)
    views = []
    if config.center_view:
        views.append(eval_features.to(model.device) if eval_features is not None
                     else encode_images(model, data.images, eval_transform(model.backbone), should_stop=stop))
    while len(views) < config.views:
        views.append(encode_images(model, data.images, aug, should_stop=stop))
    return torch.stack(views)

