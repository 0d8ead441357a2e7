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

A training can also run in several calls: ``start_fit`` -> ``fit_epochs`` (as
often as needed, each with a time budget) -> ``finish_fit``, with a picklable
``FitState`` in between; ``fit`` is the three in one call, and the result is
bitwise the same either way (the app cuts trainings into ZeroGPU time slots).

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

from .data import LabelledImages, train_transform
from .features import encode_images
from .integrity import check_train_settings
from .losses import LossWeights, dpt_loss, scaled_logits
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
        check_train_settings(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,  # NaN, seed range
                             warmup_lr=self.warmup_lr, seed=self.seed, loss_weights=vars(self.loss_weights))

    def to_dict(self) -> dict:
        """The settings, plus ``recipe``: which named recipe they follow (``dpt_core.recipes.recipe_of``)."""
        from .recipes import recipe_of  # recipes builds TrainConfigs: imported here, not at the top

        return {**asdict(self), "recipe": recipe_of(self)}


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of a (0-based) epoch: constant warm-up, then a cosine that starts afresh.

    Dassl's constant warm-up wraps ``CosineAnnealingLR(T_max=epochs)`` and hands it the
    epoch count from zero once the warm-up is over, so the cosine restarts at the full
    ``lr``: with one warm-up epoch, epoch 1 runs at ``lr`` and epoch e at
    ``lr * (1 + cos(pi * (e - 1) / epochs)) / 2`` (method.md section 5).
    """
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    t = epoch - config.warmup_epochs
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * t / config.epochs))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch over ``n`` images, as Dassl's loader runs them.

    ``n // batch_size`` when there is at least one full batch (the last partial batch is
    dropped); with fewer images than one batch, one step over all of them.
    """
    if n < 1 or batch_size < 1:
        raise ValueError("n and batch_size must be >= 1")
    return n // batch_size if n >= batch_size else 1


def batch_indices(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The images of one step: ``order``'s full batch ``step``, or all of ``order`` when it holds less than a batch."""
    if len(order) < batch_size:
        return order
    return order[step * batch_size:(step + 1) * batch_size]


@dataclass
class StepInfo:
    epoch: int  # 0-based
    epochs: int
    step: int  # 0-based within the epoch
    steps_per_epoch: int
    loss: dict[str, float]
    lr: float
    elapsed_s: float
    history: list[dict] = field(default_factory=list)  # completed epochs so far, this step's included


@dataclass
class FitResult:
    history: list[dict]  # one entry per completed epoch: epoch, lr, mean loss parts
    stopped: bool  # True when should_stop() ended training early
    seconds: float
    feature_seconds: float  # fast mode: caching the views; exact mode: 0


@dataclass
class FitState:
    """A fit between two calls: all that is needed to go on with it, in this process or another.

    Hugging Face ZeroGPU gives a GPU for one function call at a time, runs that call in a
    worker process and passes its arguments and result by pickle; a long training must
    therefore be cut into calls that each fit a time slot. Everything here is on the CPU
    so that it pickles, and going on from a state (``fit_epochs``) is bitwise the same
    training as one uninterrupted ``fit`` on the same device: context, optimizer momentum,
    both random streams (dropout/augmentation, batch order) and the best epoch so far are
    carried over.
    """

    epochs: int  # the config's total (checked against the config on every call)
    ctx: torch.Tensor  # the context now
    best_ctx: torch.Tensor  # the context after the best completed epoch (the initial one before any)
    history: list[dict] = field(default_factory=list)  # one entry per completed epoch
    optimizer: dict | None = None  # SGD state_dict (momentum buffers), None before the first step
    rng: torch.Tensor | None = None  # torch's CPU generator (dropout and augmentation on the CPU)
    cuda_rng: torch.Tensor | None = None  # the CUDA generator (dropout on the GPU)
    order_rng: torch.Tensor | None = None  # the batch-order generator
    views: torch.Tensor | None = None  # fast mode: cached view features [V, N, E]
    stopped: bool = False
    seconds: float = 0.0
    feature_seconds: float = 0.0

    @property
    def epoch(self) -> int:
        """The next epoch to run (0-based)."""
        return len(self.history)

    @property
    def best_loss(self) -> float:
        return min((h["total"] for h in self.history), default=math.inf)

    @property
    def finished(self) -> bool:
        return self.stopped or self.epoch >= self.epochs


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

    Cooperative cancel: ``should_stop`` is polled before every step (and between
    feature batches); when it fires, the context of the best completed epoch
    (lowest mean loss) is restored - or the initial one if no epoch completed -
    and ``stopped`` is set.
    """
    state = start_fit(model, data, config, should_stop, eval_features)
    state = fit_epochs(model, data, teacher, config, state, on_step, should_stop)
    return finish_fit(model, state)


def start_fit(
    model: BiomedDPT,
    data: LabelledImages,
    config: TrainConfig = TrainConfig(),
    should_stop: Callable[[], bool] | None = None,
    eval_features: torch.Tensor | None = None,
) -> FitState:
    """Seed the random streams and (fast mode) cache the view features; no training step yet."""
    if len(data) == 0:
        raise ValueError("no training images")
    start = time.perf_counter()
    device = model.device
    ctx = model.prompt_learner.ctx.detach().cpu().clone()
    state = FitState(config.epochs, ctx, ctx.clone())
    with _private_rng(device):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        if config.mode == "fast":
            try:
                state.views = _cache_views(model, data, config, should_stop, eval_features).cpu()
            except InterruptedError:
                state.stopped = True
            state.feature_seconds = time.perf_counter() - start
        _save_rng(state, gen, device)
    state.seconds = time.perf_counter() - start
    return state


def fit_epochs(
    model: BiomedDPT,
    data: LabelledImages,
    teacher: Teacher,
    config: TrainConfig,
    state: FitState,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    budget_s: float | None = None,
) -> FitState:
    """Run epochs from ``state.epoch`` until all are done, a stop, or the time budget; returns ``state``.

    ``budget_s``: seconds this call may take. Before each epoch but the first of the
    call, the epoch is skipped (left for the next call) when the time so far plus the
    mean epoch time of this call would exceed it; so a call overruns its budget only
    when a single epoch is longer than it. ``state`` is updated in place.
    """
    if state.epochs != config.epochs:
        raise ValueError(f"this fit state is for {state.epochs} epochs, the config says {config.epochs}")
    if state.finished:
        return state
    start = time.perf_counter()
    device = model.device
    with torch.no_grad():
        model.prompt_learner.ctx.copy_(state.ctx.to(device))
    teacher_text = teacher.features().to(device)
    labels = data.labels.to(device)
    optim = torch.optim.SGD([model.prompt_learner.ctx], lr=config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay)
    if state.optimizer is not None:
        optim.load_state_dict(state.optimizer)  # moves the momentum buffer to the context's device
    text_encoder = model.text_encoder.with_dropout() if config.text_dropout else model.text_encoder
    stop = should_stop or (lambda: False)
    views = state.views.to(device) if state.views is not None else None
    aug = train_transform(model.backbone) if views is None else None
    n = len(data)
    steps = steps_per_epoch(n, config.batch_size)

    with _private_rng(device):
        gen = _load_rng(state, device)
        epoch_seconds: list[float] = []
        for epoch in range(state.epoch, config.epochs):
            elapsed = time.perf_counter() - start
            if budget_s is not None and epoch_seconds and elapsed + sum(epoch_seconds) / len(epoch_seconds) > budget_s:
                break
            t_epoch = time.perf_counter()
            lr = lr_at(config, epoch)
            for g in optim.param_groups:
                g["lr"] = lr
            order = torch.randperm(n, generator=gen)
            sums = {"ce": 0.0, "l1": 0.0, "kl": 0.0, "total": 0.0}
            for step in range(steps):
                if stop():
                    state.stopped = True
                    break
                idx = batch_indices(order, step, config.batch_size)
                if views is not None:
                    feats = views[epoch % config.views, idx.to(device)]
                else:
                    with torch.no_grad():
                        batch = torch.stack([aug(data.images[int(i)]) for i in idx]).to(device)
                        feats = model.encode_image(batch)
                out = model(image_features=feats, text_encoder=text_encoder)
                teacher_logits = scaled_logits(feats, teacher_text, model.logit_scale())
                parts = dpt_loss(out.logits, teacher_logits, labels[idx.to(device)], out.text_features,
                                 teacher_text, config.loss_weights)
                optim.zero_grad(set_to_none=True)
                parts.total.backward()
                optim.step()
                values = parts.as_floats()
                for k in sums:
                    sums[k] += values[k]
                if step == steps - 1:  # the epoch is complete: record it before reporting its last step
                    mean = {k: v / steps for k, v in sums.items()}
                    if mean["total"] < state.best_loss:  # strictly: the first of equal epochs is kept
                        state.best_ctx = model.prompt_learner.ctx.detach().cpu().clone()
                    state.history.append({"epoch": epoch + 1, "lr": lr, **mean})
                if on_step is not None:
                    on_step(StepInfo(epoch, config.epochs, step, steps, values, lr,
                                     state.seconds + time.perf_counter() - start, list(state.history)))
            if state.stopped:
                break
            epoch_seconds.append(time.perf_counter() - t_epoch)
        _save_rng(state, gen, device)
    state.ctx = model.prompt_learner.ctx.detach().cpu().clone()
    state.optimizer = _cpu_state(optim.state_dict())
    state.seconds += time.perf_counter() - start
    return state


def finish_fit(model: BiomedDPT, state: FitState) -> FitResult:
    """Put the final context into ``model``: the last epoch's, or the best epoch's after a stop."""
    with torch.no_grad():
        model.prompt_learner.ctx.copy_((state.best_ctx if state.stopped else state.ctx).to(model.device))
    return FitResult(list(state.history), state.stopped, state.seconds, state.feature_seconds)


def _private_rng(device: torch.device):
    """Training draws from torch's global generators; fork them so that the caller's are untouched."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _save_rng(state: FitState, gen: torch.Generator, device: torch.device) -> None:
    state.rng = torch.get_rng_state()
    state.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    state.order_rng = gen.get_state()


def _load_rng(state: FitState, device: torch.device) -> torch.Generator:
    torch.set_rng_state(state.rng)
    if device.type == "cuda" and state.cuda_rng is not None:
        torch.cuda.set_rng_state(state.cuda_rng, device)
    gen = torch.Generator()
    gen.set_state(state.order_rng)
    return gen


def _cpu_state(value):
    """An optimizer state_dict with its tensors on the CPU (so that it pickles anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cpu_state(v) for v in value]
    return value


def _cache_views(model: BiomedDPT, data: LabelledImages, config: TrainConfig, stop: Callable[[], bool] | None,
                 eval_features: torch.Tensor | None) -> torch.Tensor:
    """[V, N, E] normalised features: RandomResizedCrop views of every image (+ the centre crop first)."""
    aug = train_transform(model.backbone)
    views = []
    if config.center_view:
        views.append(eval_features.to(model.device) if eval_features is not None
                     else encode_images(model, data.images, should_stop=stop))
    while len(views) < config.views:
        views.append(encode_images(model, data.images, aug, should_stop=stop))
    return torch.stack(views)
