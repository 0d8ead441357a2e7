"""End-to-end steps shared by the CLI and the app: class setup, training, checking, saving.

Each function is one user-level action over the pieces in this package; none
of them holds state between calls.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .backbone import Backbone
from .calibration import Calibration
from .checkpoint import PromptCheckpoint, make_config, save_checkpoint
from .ckpt_config import run_fields
from .data import LabelledImages
from .descriptions import descriptions_hash, resolve_descriptions
from .evaluate import Evaluation, evaluate_features
from .features import encode_images
from .losses import LossWeights
from .model import BiomedDPT
from .predictor import check_class_names
from .presets import Preset, load_preset
from .prompt_bank import build_prompt_bank
from .teacher import Teacher, build_teacher, teacher_record
from .train import FitResult, FitState, StepInfo, TrainConfig, finish_fit, fit_epochs, start_fit, steps_per_epoch
from .visual import VisualPromptConfig

log = logging.getLogger(__name__)
CUSTOM_TEMPLATE, CUSTOM_N_CTX = "a photo of a {}.", 4


@dataclass
class ClassSetup:
    """Everything about the classes that a model, a teacher and a checkpoint need."""

    class_names: list[str]
    template: str
    n_ctx: int
    templates: list[str]
    descriptions: dict[str, list[str]]
    preset: Preset | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    class_position: str = "end"  # class word-piece at the end, or the reference's "middle"


def setup_classes(
    preset: str | None = None,
    class_names: Sequence[str] | None = None,
    descriptions: Mapping[str, Sequence[str]] | None = None,
    protocol: str = "few_shot",
    template: str | None = None,
    n_ctx: int | None = None,
    class_position: str = "end",
) -> ClassSetup:
    """Classes from the arguments, else the preset; descriptions: overrides, else the preset's bank."""
    p = load_preset(preset) if preset else None
    names = check_class_names(class_names if class_names else (p.classes if p else []))
    return ClassSetup(
        class_names=names,
        template=template or (p.template if p else CUSTOM_TEMPLATE),
        n_ctx=n_ctx or (p.n_ctx if p else CUSTOM_N_CTX),
        templates=list(p.templates) if p else [template or CUSTOM_TEMPLATE],
        descriptions=resolve_descriptions(names, p.name if p else None, descriptions),
        preset=p,
        loss_weights=p.weights(protocol) if p else LossWeights(),
        class_position=class_position,
    )


@dataclass
class TrainOutcome:
    model: BiomedDPT
    teacher: Teacher
    fit: FitResult
    n_train: int  # training images


def prepare_training(
    backbone: Backbone,
    setup: ClassSetup,
    data: LabelledImages,
    config: TrainConfig,
    teacher_mode: str = "mean",
    visual: VisualPromptConfig = VisualPromptConfig(),
    should_stop: Callable[[], bool] | None = None,
    train_features: torch.Tensor | None = None,
) -> tuple[BiomedDPT, Teacher, FitState]:
    """The model at its template initialisation, the teacher, and a started fit (no step yet).

    Centre-crop features of the training images are needed by the ranked teacher
    (encoded here when missing) and by the fast mode's centre view (``start_fit``
    encodes them when missing); pass them if you have them.
    """
    model = zero_shot_model(backbone, setup, visual)
    if train_features is None and teacher_mode == "ranked":
        train_features = encode_images(model, data.images, should_stop=should_stop)
    bank = build_prompt_bank(backbone, setup.class_names, setup.templates, setup.descriptions)
    teacher = build_teacher(bank, teacher_mode, train_features, data.labels, float(backbone.logit_scale()))
    state = start_fit(model, data, config, should_stop=should_stop, eval_features=train_features)
    return model, teacher, state


def train_prompts(
    backbone: Backbone,
    setup: ClassSetup,
    data: LabelledImages,
    config: TrainConfig,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **prepare_options: Any,
) -> TrainOutcome:
    """``prepare_training``, then the whole fit in this call.

    ``prepare_options``: ``teacher_mode``, ``visual``, ``train_features``.
    """
    model, teacher, state = prepare_training(backbone, setup, data, config, should_stop=should_stop,
                                             **prepare_options)
    fit_epochs(model, data, teacher, config, state, on_step=on_step, should_stop=should_stop)
    return TrainOutcome(model, teacher, finish_fit(model, state), len(data))


def zero_shot_model(backbone: Backbone, setup: ClassSetup, visual: VisualPromptConfig = VisualPromptConfig()) -> BiomedDPT:
    """The untrained prompt: the context at its initialisation is the clinical template itself."""
    return BiomedDPT(backbone, setup.class_names, setup.template, setup.n_ctx, visual,
                     class_position=setup.class_position)


def holdout_split(labels: torch.Tensor, fraction: float = 0.25, min_per_class: int = 2, seed: int = 0) -> tuple[list[int], list[int]] | None:
    """Leave-some-out per class: (train idx, held-out idx), or None when a class has too few images.

    A class needs at least ``min_per_class`` images so that one can be held out
    and at least one remains for training.
    """
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        if len(idx) < min_per_class:
            return None
        idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
        k = max(1, int(math.floor(len(idx) * fraction)))
        held += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(held)


def evaluate_on(model: BiomedDPT, features: torch.Tensor, labels: torch.Tensor, teacher: Teacher,
                weights: LossWeights) -> Evaluation:
    return evaluate_features(model, features, labels, teacher.features(), weights)


def save_trained(
    out_dir: str | Path,
    outcome: TrainOutcome,
    setup: ClassSetup,
    config: TrainConfig,
    metrics: dict | None = None,
    data_description: str = "",
    protocol: str = "few_shot",
    training_extra: dict | None = None,
    shots: int | None = None,
    data: dict | None = None,
    calibration: Calibration | None = None,
) -> Path:
    """Write the trained prompts as a checkpoint folder (config records data, settings, metrics).

    Every writer (CLI ``train``, ``sweep``, the app) comes through here, so every run records
    the fields of ``ckpt_config.run_fields``; ``data``: ``split_file``, ``split_sha256``,
    ``train_images`` when the run drew from a split file. ``calibration``: fitted on held-out
    images, stored as the config's ``"calibration"`` block.
    """
    record, tensors = teacher_record(outcome.teacher)
    run = run_fields(protocol=protocol, shots=shots, seed=config.seed, epochs=config.epochs,
                     batch_size=config.batch_size, steps_per_epoch=steps_per_epoch(outcome.n_train, config.batch_size),
                     class_position=setup.class_position, history=outcome.fit.history)
    cfg = make_config(
        outcome.model,
        preset=setup.preset,
        teacher=record,
        loss_weights={"l1": config.loss_weights.l1, "kl": config.loss_weights.kl},
        data=data,
        training={**config.to_dict(), **run, "n_train_images": outcome.n_train,
                  "stopped_early": outcome.fit.stopped, "epochs_completed": len(outcome.fit.history),
                  "fast_mode_note": "fast: image features of `views` RandomResizedCrop views cached once; "
                                    "same batches, schedule, loss and BERT dropout as exact",
                  **(training_extra or {})},
        metrics=metrics or {},
        data_description=data_description,
        extra={"descriptions_hash": descriptions_hash(setup.descriptions), "templates": list(setup.templates),
               **({"calibration": calibration.to_config()} if calibration is not None else {})},
    )
    return save_checkpoint(out_dir, outcome.model, cfg, tensors)


def setup_from_checkpoint(ckpt: PromptCheckpoint, class_names: Sequence[str] | None = None,
                          descriptions: Mapping[str, Sequence[str]] | None = None) -> ClassSetup:
    """Class setup recorded by a checkpoint (its preset's bank unless overridden)."""
    names = check_class_names(class_names or ckpt.class_names)
    lw = ckpt.config.get("loss_weights") or {}
    return ClassSetup(
        class_names=names,
        template=ckpt.template,
        n_ctx=ckpt.n_ctx,
        templates=list(ckpt.config.get("templates") or [ckpt.template]),
        descriptions=resolve_descriptions(names, ckpt.preset, descriptions),
        preset=load_preset(ckpt.preset) if ckpt.preset else None,
        loss_weights=LossWeights(float(lw.get("l1", 0.0)), float(lw.get("kl", 0.0))),
        class_position=ckpt.class_position,
    )
