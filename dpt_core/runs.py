"""One training run of a paper protocol, from data on disk to a checkpoint folder with its metrics.

``python -m dpt_core train`` and every run of ``sweep`` call ``run_training``:
read the data (a BiomedCoOp dataset folder with its split file, or an image
folder), draw the few-shot set as Dassl does, train, test on the split's
``test`` images and save a checkpoint whose ``config.json`` records the run
(``ckpt_config``). Base-to-novel draws over all classes, keeps the base half,
and tests base accuracy with the base class names and novel accuracy with the
novel class names and the same context.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .backbone import Backbone
from .calibration import Calibration, calibrate, calibrate_features
from .data import (
    DataError,
    ImageRecord,
    LabelledImages,
    few_shot,
    file_sha256,
    find_split_file,
    read_split_file,
    resolve_split_file,
    scan_image_folder,
    validation_records,
)
from .descriptions import resolve_descriptions, same_classes
from .evaluate import base_novel_split, evaluate_features, harmonic_mean
from .features import encode_images
from .fewshot import HeldOutCheck, check_features, plan_holdout
from .losses import LossWeights
from .outpath import empty_classes
from .prompt_bank import build_prompt_bank
from .teacher import build_teacher
from .train import StepInfo, TrainConfig
from .visual import VisualPromptConfig
from .workflow import (
    ClassSetup,
    TrainOutcome,
    save_trained,
    setup_classes,
    train_prompts,
    zero_shot_model,
)

log = logging.getLogger(__name__)
PAPER_EPOCHS = {"few_shot": 100, "base2novel": 50}  # method.md section 5


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; the sweep builds one per (dataset, shots, seed)."""

    data: str  # dataset folder (ROOT/<FOLDER> with split_<FOLDER>.json) or an image folder
    out: str  # the checkpoint folder to write
    shots: int
    seed: int = 1
    preset: str | None = None
    protocol: str = "few_shot"  # or "base2novel"
    epochs: int | None = None  # None: the paper's epochs for the protocol
    split_file: str | None = None  # None: split_<FOLDER>.json (or the only split_*.json) in ``data``
    exact: bool = True  # the paper's recipe step by step; False: the cached-views fast mode
    teacher: str = "mean"
    class_position: str = "end"
    classes: tuple[str, ...] | None = None
    descriptions: Mapping[str, Sequence[str]] | None = None
    batch_size: int = 4
    lr: float = 0.0025
    views: int = 8
    l1: float | None = None
    kl: float | None = None
    visual_layout: str = "reference"
    data_description: str = ""
    holdout: float | None = None  # hold out this fraction of each class: held-out check + calibration

    def __post_init__(self) -> None:
        if self.protocol not in PAPER_EPOCHS:
            raise ValueError(f"protocol must be few_shot or base2novel, not {self.protocol!r}")

    @property
    def n_epochs(self) -> int:
        return self.epochs if self.epochs is not None else PAPER_EPOCHS[self.protocol]  # 0 is refused later


@dataclass
class RunResult:
    folder: Path
    metrics: dict  # everything recorded: test metrics, plus the held-out check's when there is one
    seconds: float
    n_train: int
    history: list[dict] = field(default_factory=list)
    test_metrics: dict = field(default_factory=dict)  # on the split file's test images
    holdout: HeldOutCheck | None = None


def _split_records(spec: RunSpec, class_names: Sequence[str],
                   split: str) -> tuple[list[str], list[ImageRecord], Path | None]:
    """(class names, records, split file or None) of the split file in ``spec.data``, else of an image folder."""
    split_file = resolve_split_file(spec.data, spec.split_file) if spec.split_file else find_split_file(spec.data)
    if split_file is not None:
        names, records = read_split_file(spec.data, split_file, split)
        return names, records, split_file
    names, records = scan_image_folder(spec.data, class_names)
    return names, records, None


def _subset(setup: ClassSetup, class_names: Sequence[str], ids: Sequence[int]) -> ClassSetup:
    """The setup restricted to (and named after) the data's classes ``ids`` (user descriptions kept)."""
    names = [class_names[i] for i in ids]
    desc = resolve_descriptions(names, setup.preset.name if setup.preset else None, setup.descriptions)
    return replace(setup, class_names=names, descriptions=desc)


def _prepare(spec: RunSpec, warn: Callable[[str], None]):
    """Classes, the Dassl draw (base classes kept for base-to-novel) and the loss weights of a run."""
    setup = setup_classes(spec.preset, spec.classes, spec.descriptions, spec.protocol,
                          class_position=spec.class_position)
    class_names, records, split_file = _split_records(spec, setup.class_names, "train")
    if empty := empty_classes(class_names, [r.label for r in records]):
        raise DataError(f"no images for class(es): {', '.join(empty)} (empty or missing class folders)")
    if not same_classes(class_names, setup.class_names):
        warn(f"training on the data's classes {class_names}, not the preset's")
    all_ids = list(range(len(class_names)))
    base_ids, novel_ids = base_novel_split(len(class_names)) if spec.protocol == "base2novel" else (all_ids, [])
    # Dassl draws over every class first and only then keeps the base ones (method.md section 5).
    drawn = [r for r in few_shot(records, spec.shots, spec.seed) if r.label in base_ids]
    if not drawn:
        raise DataError("the draw left no training image")
    full = _subset(setup, class_names, all_ids)
    setup = _subset(setup, class_names, base_ids)
    weights = LossWeights(spec.l1 if spec.l1 is not None else setup.loss_weights.l1,
                          spec.kl if spec.kl is not None else setup.loss_weights.kl)
    return setup, full, class_names, base_ids, novel_ids, drawn, split_file, weights


def training_set(spec: RunSpec, warn: Callable[[str], None] = log.warning) -> tuple[ClassSetup, LabelledImages,
                                                                                    LossWeights]:
    """(class setup, decoded drawn images, loss weights) of a run, for callers with their own training loop."""
    setup, _, _, _, _, drawn, _, weights = _prepare(spec, warn)
    return setup, LabelledImages.from_records(drawn, setup.class_names), weights


def run_training(
    spec: RunSpec,
    backbone: Backbone,
    on_step: Callable[[StepInfo], None] | None = None,
    warn: Callable[[str], None] = log.warning,
) -> RunResult:
    """Train one run of ``spec`` and write its checkpoint; raises DataError/ValueError for bad input."""
    start = time.perf_counter()
    setup, full, class_names, base_ids, novel_ids, drawn, split_file, weights = _prepare(spec, warn)
    config = TrainConfig(epochs=spec.n_epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                         mode="exact" if spec.exact else "fast", views=spec.views, loss_weights=weights)
    data = LabelledImages.from_records(drawn, setup.class_names)
    held, held_records = None, []
    if spec.holdout is not None:  # held out before training: never trained on
        if not 0.0 < spec.holdout < 1.0:
            raise DataError(f"--holdout must be a fraction between 0 and 1, not {spec.holdout}")
        split = plan_holdout(data.labels, spec.seed, spec.holdout, min_per_class=2)
        if split is None:
            raise DataError("a held-out check needs at least 2 images in every class")
        train_idx, held_idx = split
        data, held = data.subset(train_idx), data.subset(held_idx)
        held_set = set(held_idx)
        held_records = [drawn[i] for i in held_idx]
        drawn = [r for i, r in enumerate(drawn) if i not in held_set]
    visual = VisualPromptConfig(layout=spec.visual_layout)
    outcome = train_prompts(backbone, setup, data, config, on_step=on_step, teacher_mode=spec.teacher, visual=visual)
    test: dict = {}
    data_record: dict = {}
    if split_file is not None:
        _, test_records, _ = _split_records(spec, class_names, "test")
        test = split_metrics(outcome, full, class_names, test_records, base_ids, novel_ids, weights, backbone)
        data_record = {"split_file": split_file.name, "split_sha256": file_sha256(split_file),
                       "train_images": [r.rel for r in drawn]}
        if held_records:
            data_record["heldout_images"] = [r.rel for r in held_records]
    check = None
    if held is not None:
        feats = encode_images(outcome.model, held.images)
        check = check_features(outcome.model, zero_shot_model(backbone, setup, visual), feats, held.labels,
                               outcome.teacher, weights)
        check.calibration = calibrate_features(outcome.model, feats, held.labels,
                                               source=f"{len(held)} images held out of training")
    calibration = check.calibration if check else None
    if calibration is None and split_file is not None:
        calibration = _validation_calibration(spec, outcome.model, class_names, base_ids)
    metrics = {**test, **(check.metrics() if check else {})}
    description = spec.data_description or "Not described by the person who trained it."
    folder = save_trained(
        spec.out, outcome, setup, config, metrics,
        data_description=f"{description} ({len(data)} training images, {spec.shots} shots per class, "
                         f"from {Path(spec.data).name}.)",
        protocol=spec.protocol, shots=spec.shots, data=data_record,
        training_extra={"data": Path(spec.data).name}, calibration=calibration,
    )
    return RunResult(Path(folder), metrics, time.perf_counter() - start, len(data), list(outcome.fit.history),
                     test, check)


def _validation_calibration(spec: RunSpec, model, class_names: Sequence[str],
                            trained_ids: Sequence[int]) -> Calibration | None:
    """Calibration on the split's ``val`` part: min(K, 4) images per trained class, drawn as the reference
    draws its validation set (``data.validation_records``); None when the split file has no ``val`` part."""
    try:
        _, val, _ = _split_records(spec, class_names, "val")
    except DataError:
        return None
    _, train, _ = _split_records(spec, class_names, "train")  # read again (no image decoded) to replay the draw
    keep = set(trained_ids)  # base-to-novel: the base classes, which are labels 0 .. B-1
    records = [r for r in validation_records(train, val, spec.shots, spec.seed) if r.label in keep]
    if not records:
        return None
    images = LabelledImages.from_records(records, [class_names[i] for i in trained_ids])
    return calibrate(model, images, source=f"{len(records)} validation images (min(K, 4) per class)")


def split_metrics(outcome: TrainOutcome, setup: ClassSetup, class_names: Sequence[str], test: Sequence[ImageRecord],
                 base_ids: Sequence[int], novel_ids: Sequence[int], weights: LossWeights,
                 backbone: Backbone) -> dict:
    """Few-shot: ``accuracy``/``per_class``. Base-to-novel: ``base_*``, ``novel_*`` and ``harmonic_mean``."""
    metrics: dict = {}
    model = outcome.model
    for tag, ids in (("base", base_ids), ("novel", novel_ids)):
        if not ids:
            continue
        names = [class_names[i] for i in ids]
        remap = {old: new for new, old in enumerate(ids)}
        recs = [r for r in test if r.label in remap]
        if not recs:
            continue
        data = LabelledImages.from_records(recs, names)
        labels = torch.tensor([remap[r.label] for r in recs], dtype=torch.long)
        model.prompt_learner.set_classes(names)  # same ctx, these class names
        feats = encode_images(model, data.images)
        desc = resolve_descriptions(names, setup.preset.name if setup.preset else None, setup.descriptions)
        teacher = build_teacher(build_prompt_bank(backbone, names, setup.templates, desc), "mean")
        ev = evaluate_features(model, feats, labels, teacher.features(), weights)
        few = not novel_ids
        metrics["accuracy" if few else f"{tag}_accuracy"] = ev.accuracy
        metrics["per_class" if few else f"{tag}_per_class"] = ev.per_class
    model.prompt_learner.set_classes([class_names[i] for i in base_ids])
    if novel_ids and "base_accuracy" in metrics and "novel_accuracy" in metrics:
        metrics["harmonic_mean"] = harmonic_mean(metrics["base_accuracy"], metrics["novel_accuracy"])
    return metrics
