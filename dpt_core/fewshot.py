"""The few-shot run: a handful of labelled images -> an adapted prompt checkpoint and a held-out check.

The Few-shot tab and ``python -m dpt_core train --holdout F`` run this same code:

    prepare_run -> train_slice (as many calls as needed) -> finish_run

with picklable data in between, so that each phase can be one call in another process (a
ZeroGPU slot, see ``app.device``). Progress and stop requests are plain callables
(``report(Status)``, ``should_stop() -> bool``); ``run_fewshot`` strings the phases together.

Rules, and why:

- Held-out check: when every class has at least ``HELDOUT_MIN_PER_CLASS`` (4) images, a
  ``holdout`` share of each class (at least one image) is held out, never trained on, and both
  the adapted and the zero-shot prompt are scored on it. Below 4 the held-out set would be one
  image per class taken from three or fewer, which removes a third of the training data to
  measure almost nothing; then everything is trained on and no accuracy is reported, because
  accuracy on training images is not a test.
- Training: the device's default from ``dpt_core.recipes.fewshot_config``: fast mode (image
  features of ``views`` crops cached once, so a step runs only the text tower); on a CPU few
  large steps (the whole small upload per step) so that 4 classes x 8 images take about a
  minute with the full-size model; on a GPU the paper's 100 epochs and batch 4.
- Image features are computed once with eval preprocessing for all images; the training part
  feeds the ranked teacher and the first training view, the held-out part serves both prompts'
  check, so no image is encoded twice.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from .backbone import Backbone
from .calibration import Calibration, calibrate_features
from .data import LabelledImages
from .errors import FewShotError, TrainingStopped
from .evaluate import Evaluation
from .features import encode_images
from .integrity import SEED_MAX
from .losses import LossWeights
from .recipes import fewshot_config
from .teacher import TEACHER_MODES, Teacher
from .train import FitState, StepInfo, TrainConfig, finish_fit, fit_epochs
from .visual import LAYOUTS, VisualPromptConfig
from .workflow import (
    ClassSetup,
    TrainOutcome,
    evaluate_on,
    holdout_split,
    prepare_training,
    save_trained,
    zero_shot_model,
)

log = logging.getLogger(__name__)

HELDOUT_MIN_PER_CLASS = 4  # every class needs this many images for a held-out check
HELDOUT_FRACTION = 0.25  # share of each class held out (at least one image)
# Defaults by device come from dpt_core.recipes (chosen with bench/bench_fewshot.py). CPU: fast
# mode, a batch that holds a small upload whole (a fast step runs the text tower once over the class
# prompts whatever the batch size), the centre crop only; GPU: the paper's 100 epochs and batch 4.
CPU_CONFIG, GPU_CONFIG = fewshot_config("cpu"), fewshot_config("cuda")
CPU_DEFAULTS = (CPU_CONFIG.epochs, CPU_CONFIG.views)
GPU_DEFAULTS = (GPU_CONFIG.epochs, GPU_CONFIG.views)
DEFAULT_BATCH = CPU_CONFIG.batch_size
DEFAULT_LR = CPU_CONFIG.lr  # the paper's learning rate
DEFAULT_EPOCHS, DEFAULT_VIEWS = CPU_DEFAULTS


@dataclass
class Status:
    """A snapshot of a running few-shot run, for whoever watches it."""

    phase: str  # waiting | encoding | views | training | checking | saving | done
    text: str
    fraction: float = 0.0  # of the training steps
    epochs: list[dict] = field(default_factory=list)  # per completed epoch: epoch + mean loss parts
    elapsed_s: float = 0.0


Reporter = Callable[[Status], None]
StopCheck = Callable[[], bool]


def _ignore(_status: Status) -> None:
    return None


def _never() -> bool:
    return False


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class TrainSettings:
    """The run's knobs (the tab's Advanced accordion, the CLI's flags); ``from_setup`` gives the defaults."""

    epochs: int = DEFAULT_EPOCHS
    views: int = DEFAULT_VIEWS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH
    l1: float = 0.0
    kl: float = 0.0
    teacher: str = "mean"
    layout: str = "reference"
    seed: int = 1
    holdout: float = HELDOUT_FRACTION  # share of each class held out for the check (0: none)
    holdout_min: int = HELDOUT_MIN_PER_CLASS  # images every class needs for a check (the CLI asks for 2)

    @classmethod
    def from_setup(cls, setup: ClassSetup, gpu: bool = False, **overrides) -> TrainSettings:
        d = GPU_CONFIG if gpu else CPU_CONFIG
        base = cls(epochs=d.epochs, views=d.views, lr=d.lr, batch_size=d.batch_size, l1=setup.loss_weights.l1,
                   kl=setup.loss_weights.kl)
        return replace(base, **overrides)

    def checked(self) -> TrainSettings:
        """Coerced to the right types and checked; problems become one readable message."""
        try:
            s = replace(self, epochs=int(self.epochs), views=int(self.views), lr=float(self.lr),
                        batch_size=int(self.batch_size), l1=float(self.l1), kl=float(self.kl), seed=int(self.seed),
                        holdout=float(self.holdout))
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise FewShotError("Advanced settings: every field needs a number.") from None
        problems = []
        if not 1 <= s.epochs <= 200:
            problems.append("epochs must be between 1 and 200")
        if not 1 <= s.views <= 16:
            problems.append("views per image must be between 1 and 16")
        if not 0 < s.lr <= 1 or not math.isfinite(s.lr):
            problems.append("the learning rate must be above 0 and at most 1")
        if s.l1 < 0 or s.kl < 0 or not (math.isfinite(s.l1) and math.isfinite(s.kl)):
            problems.append("loss weights must be 0 or more")
        if not 0 <= s.seed <= SEED_MAX:
            problems.append(f"the seed must be between 0 and {SEED_MAX}")
        if s.batch_size < 1:
            problems.append("the batch size must be 1 or more")
        if not 0 <= s.holdout < 1:
            problems.append("the held-out share must be at least 0 and below 1")
        if s.teacher not in TEACHER_MODES:
            problems.append(f"teacher must be one of {', '.join(TEACHER_MODES)}")
        if s.layout not in LAYOUTS:
            problems.append(f"visual prompt layout must be one of {', '.join(LAYOUTS)}")
        if problems:
            raise FewShotError("Advanced settings: " + "; ".join(problems) + ".")
        return s

    def train_config(self) -> TrainConfig:
        # center_view: view 0 is the centre crop whose features the held-out check needs anyway,
        # so "2 views" costs one augmented image pass, not two.
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, mode="fast",
                           views=self.views, center_view=True, seed=self.seed,
                           loss_weights=LossWeights(self.l1, self.kl))

    def visual(self) -> VisualPromptConfig:
        return VisualPromptConfig(layout=self.layout)


def default_batch(gpu: bool = False) -> int:
    """The batch size of the device's default (the tab has no field for it)."""
    return (GPU_CONFIG if gpu else CPU_CONFIG).batch_size


# --------------------------------------------------------------------------- results

@dataclass
class HeldOutCheck:
    """Adapted vs zero-shot prompt on the same held-out images (never trained on).

    ``adapted_logits`` [H, C] (the adapted prompt's scaled logits) and ``labels`` [H] are kept
    on the CPU so that a calibration (temperature, conformal threshold) can be fitted on them.
    """

    adapted: Evaluation
    zero_shot: Evaluation
    adapted_logits: torch.Tensor  # [H, C]
    labels: torch.Tensor  # [H]
    calibration: Calibration | None = None  # fitted on the same images, once the caller has done so

    @property
    def n_images(self) -> int:
        return self.adapted.n

    @property
    def per_class_counts(self) -> list[int]:
        return [sum(row) for row in self.adapted.confusion_matrix]  # rows: true class

    def metrics(self) -> dict:
        """What a checkpoint's ``metrics`` records of the check (accuracies as fractions, ECE when calibrated)."""
        ece = {} if self.calibration is None else {"heldout_ece_before": round(self.calibration.ece_before, 4),
                                                   "heldout_ece_after": round(self.calibration.ece_after, 4)}
        return {
            **ece,
            "heldout_images": self.n_images,
            "heldout_accuracy": round(self.adapted.accuracy, 4),
            "zero_shot_heldout_accuracy": round(self.zero_shot.accuracy, 4),
            "heldout_per_class": _rounded(self.adapted.per_class),
            "zero_shot_heldout_per_class": _rounded(self.zero_shot.per_class),
        }

    def to_json(self) -> dict:
        """``{"n_images", "adapted": {"accuracy", "per_class"}, "zero_shot": {...}}`` (the CLI's ``holdout``)."""
        return {"n_images": self.n_images,
                "adapted": {"accuracy": self.adapted.accuracy, "per_class": self.adapted.per_class},
                "zero_shot": {"accuracy": self.zero_shot.accuracy, "per_class": self.zero_shot.per_class}}


@dataclass
class FewShotResult:
    folder: Path
    class_names: list[str]
    preset: str | None
    n_images: int
    n_train: int
    settings: TrainSettings
    history: list[dict]
    stopped: bool
    check: HeldOutCheck | None
    no_check_reason: str  # why there is no held-out check ("" when there is one)
    timings: dict[str, float]
    random_weights: bool
    calibration: Calibration | None = None  # fitted on the held-out images; None without a held-out check

    @property
    def epochs_completed(self) -> int:
        return len(self.history)


def plan_holdout(labels: torch.Tensor, seed: int = 0, fraction: float = HELDOUT_FRACTION,
                 min_per_class: int = HELDOUT_MIN_PER_CLASS) -> tuple[list[int], list[int]] | None:
    """(train idx, held-out idx) when every class has >= ``min_per_class`` images, else None."""
    if fraction <= 0:
        return None
    return holdout_split(labels, fraction, min_per_class, seed)


def no_check_reason(labels: torch.Tensor, class_names: Sequence[str], fraction: float = HELDOUT_FRACTION) -> str:
    if fraction <= 0:
        return f"No held-out check was asked for. The prompt was trained on all {len(labels)} images."
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    fewest = min(range(len(counts)), key=counts.__getitem__)
    return (f"No held-out check: that needs at least {HELDOUT_MIN_PER_CLASS} images in every class "
            f"(fewest: {counts[fewest]} for '{class_names[fewest]}'). The prompt was trained on all "
            f"{len(labels)} images. No accuracy is shown, because accuracy on the training images is not a test.")


# --------------------------------------------------------------------------- the phases

class _StepTracker:
    """Turns fit's per-step callbacks into Status snapshots (a plot reads the completed epochs)."""

    def __init__(self, report: Reporter, started: float):
        self.report, self.started = report, started  # started: time.time() (calls may be in other processes)

    def __call__(self, info: StepInfo) -> None:
        done = info.epoch * info.steps_per_epoch + info.step + 1
        total = info.epochs * info.steps_per_epoch
        elapsed = time.time() - self.started
        text = (f"Training: epoch {info.epoch + 1}/{info.epochs}, step {info.step + 1}/{info.steps_per_epoch} "
                f"- loss {info.loss['total']:.3f} - {elapsed:.0f} s")
        self.report(Status("training", text, done / total, info.history, elapsed))


@dataclass
class Prepared:
    """What the first call of a run hands to the later ones. CPU tensors only: it pickles."""

    features: torch.Tensor  # [N, E] centre-crop features of every image, computed once
    labels: torch.Tensor  # [N]
    train_idx: list[int]
    held_idx: list[int]
    train: LabelledImages  # the training part without its pixels: the views' features are in the fit state
    teacher: Teacher
    state: FitState | None  # the started fit; the run takes it out (it travels on its own)
    started: float  # time.time() when the run started
    timings: dict[str, float]


def prepare_run(backbone: Backbone, setup: ClassSetup, data: LabelledImages, settings: TrainSettings,
                report: Reporter = _ignore, should_stop: StopCheck = _never) -> Prepared:
    """First call: encode every image once, split, build the teacher, cache the augmented views."""
    started = time.time()
    settings = settings.checked()
    zero = zero_shot_model(backbone, setup, settings.visual())
    report(Status("encoding", f"Encoding {len(data)} images...", elapsed_s=time.time() - started))
    t = time.perf_counter()
    try:
        feats = encode_images(zero, data.images, should_stop=should_stop)  # eval preprocessing, once
    except InterruptedError:
        raise TrainingStopped("Stopped before training started; nothing was saved.") from None
    timings = {"encode_s": time.perf_counter() - t}
    split = plan_holdout(data.labels, settings.seed, settings.holdout, settings.holdout_min)
    train_idx, held_idx = split if split else (list(range(len(data))), [])
    report(Status("views", f"Preparing the centre crop and {settings.views - 1} augmented view(s) of "
                           f"{len(train_idx)} training images...", elapsed_s=time.time() - started))
    train = data.subset(train_idx)
    _, teacher, state = prepare_training(backbone, setup, train, settings.train_config(), settings.teacher,
                                         settings.visual(), should_stop, feats[train_idx])
    timings["views_s"] = state.feature_seconds
    return Prepared(feats.cpu(), data.labels, train_idx, held_idx, train.labels_only(), teacher.to("cpu"), state,
                    started, timings)


def train_slice(backbone: Backbone, setup: ClassSetup, settings: TrainSettings, prepared: Prepared,
                state: FitState, budget_s: float | None, report: Reporter = _ignore,
                should_stop: StopCheck = _never) -> FitState:
    """One call's share of the epochs (all of them when ``budget_s`` is None); resumable."""
    settings = settings.checked()
    model = zero_shot_model(backbone, setup, settings.visual())
    return fit_epochs(model, prepared.train, prepared.teacher.to(backbone.device), settings.train_config(), state,
                      on_step=_StepTracker(report, prepared.started), should_stop=should_stop, budget_s=budget_s)


@torch.no_grad()
def _logits(model, features: torch.Tensor) -> torch.Tensor:
    return model(image_features=features).logits.float().cpu()


def check_features(model, zero_shot, features: torch.Tensor, labels: torch.Tensor, teacher: Teacher,
                   weights: LossWeights) -> HeldOutCheck:
    """Adapted ``model`` vs the ``zero_shot`` prompt on held-out image features [H, E] (never trained on)."""
    return HeldOutCheck(
        adapted=evaluate_on(model, features, labels, teacher, weights),
        zero_shot=evaluate_on(zero_shot, features, labels, teacher, weights),
        adapted_logits=_logits(model, features),
        labels=labels.cpu().clone(),
    )


def heldout_check(backbone: Backbone, setup: ClassSetup, settings: TrainSettings, model, prepared: Prepared,
                  teacher: Teacher) -> HeldOutCheck:
    """Score the adapted ``model`` and the zero-shot prompt on the run's held-out images."""
    feats = prepared.features[prepared.held_idx].to(backbone.device)
    zero = zero_shot_model(backbone, setup, settings.visual())
    return check_features(model, zero, feats, prepared.labels[prepared.held_idx], teacher,
                          settings.train_config().loss_weights)


def finish_run(backbone: Backbone, setup: ClassSetup, settings: TrainSettings, prepared: Prepared,
               state: FitState, out_dir: str | Path, data_description: str = "", report: Reporter = _ignore,
               should_stop: StopCheck = _never) -> FewShotResult:
    """Last call: the kept context, the held-out check against the zero-shot prompt, the checkpoint."""
    settings = settings.checked()
    model = zero_shot_model(backbone, setup, settings.visual())
    fit_result = finish_fit(model, state)
    teacher = prepared.teacher.to(backbone.device)
    timings = dict(prepared.timings)
    check, calibration = None, None
    if prepared.held_idx:
        report(Status("checking", "Held-out check...", 1.0, elapsed_s=time.time() - prepared.started))
        t = time.perf_counter()
        check = heldout_check(backbone, setup, settings, model, prepared, teacher)
        held_feats = prepared.features[prepared.held_idx].to(backbone.device)
        calibration = calibrate_features(model, held_feats, check.labels,
                                         source=f"{check.n_images} images held out of few-shot training")
        check.calibration = calibration
        timings["check_s"] = time.perf_counter() - t
    reason = "" if check else no_check_reason(prepared.labels, setup.class_names, settings.holdout)
    report(Status("saving", "Saving the checkpoint...", 1.0, elapsed_s=time.time() - prepared.started))
    outcome = TrainOutcome(model, teacher, fit_result, len(prepared.train_idx))
    folder = save_trained(out_dir, outcome, setup, settings.train_config(),
                          _metrics(check, reason, fit_result.stopped, len(fit_result.history), settings.holdout),
                          data_description=data_description.strip(), calibration=calibration)
    return FewShotResult(
        folder=Path(folder), class_names=list(setup.class_names),
        preset=setup.preset.name if setup.preset else None, n_images=len(prepared.labels),
        n_train=len(prepared.train_idx), settings=settings, history=list(fit_result.history),
        stopped=fit_result.stopped, check=check, no_check_reason=reason, timings=timings,
        random_weights=bool(backbone.random_weights), calibration=calibration,
    )


@dataclass(frozen=True)
class Phases:
    """The three calls of a run, each bound to where it runs (see ``in_process``; the app binds GPU calls)."""

    prepare: Callable[..., Prepared]  # (setup, data, settings, report, should_stop)
    train: Callable[..., FitState]  # (setup, settings, prepared, state, budget_s, report, should_stop)
    finish: Callable[..., FewShotResult]  # (setup, settings, prepared, state, out_dir, description, report, stop)


def in_process(backbone: Backbone) -> Phases:
    """The three calls as plain calls in this process."""
    return Phases(partial(prepare_run, backbone), partial(train_slice, backbone), partial(finish_run, backbone))


def run_fewshot(
    where: Backbone | Phases,
    setup: ClassSetup,
    data: LabelledImages,
    settings: TrainSettings,
    out_dir: str | Path,
    data_description: str = "",
    report: Reporter = _ignore,
    should_stop: StopCheck = _never,
    slice_s: float | None = None,
) -> FewShotResult:
    """Encode once, split, train, check against the zero-shot prompt, save the checkpoint.

    ``where``: a backbone (everything in this process) or ``Phases`` (e.g. GPU calls).
    ``slice_s``: seconds of training per call (None: all epochs in one call); the result is
    the same however the epochs are cut (``dpt_core.train.fit_epochs``).
    """
    phases = where if isinstance(where, Phases) else in_process(where)
    settings = settings.checked()
    start = time.perf_counter()
    prepared = phases.prepare(setup, data, settings, report, should_stop)
    state, prepared = prepared.state, replace(prepared, state=None)  # the views are not sent twice per call
    t = time.perf_counter()
    calls = 0
    while not state.finished:
        state = phases.train(setup, settings, prepared, state, slice_s, report, should_stop)
        calls += 1
    fit_s = time.perf_counter() - t  # the epochs only: the views are cached in the preparation
    result = phases.finish(setup, settings, prepared, state, out_dir, data_description, report, should_stop)
    result.timings.update(fit_s=fit_s, total_s=time.perf_counter() - start, training_calls=calls)
    log.info("few-shot training: %d images, %d epochs in %d call(s), %.1f s (encode %.1f, epochs %.1f)",
             result.n_images, result.epochs_completed, calls, result.timings["total_s"],
             result.timings["encode_s"], fit_s)
    return result


def _metrics(check: HeldOutCheck | None, reason: str, stopped: bool, epochs_done: int = 1,
             fraction: float = HELDOUT_FRACTION) -> dict:
    """What the model card reports, with its caveats spelled out."""
    caveat = ("Few-shot result from a handful of images; not a clinical validation. "
              "Accuracy on so few images changes by a large step with each image.")
    if stopped and epochs_done == 0:
        caveat += (" Training was stopped before its first epoch completed: the prompt is the untrained "
                   "(zero-shot) clinical template.")
    elif stopped:
        caveat += " Training was stopped early; the best completed epoch (lowest mean loss) was kept."
    if check is None:
        return {"heldout_check": reason, "caveat": caveat}
    return {
        **check.metrics(),
        "heldout_rule": f"{fraction:.0%} of each class (at least one image) held out when every class "
                        f"has >= {HELDOUT_MIN_PER_CLASS} images",
        "caveat": caveat,
    }


def _rounded(per_class: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None else round(v, 4)) for k, v in per_class.items()}
