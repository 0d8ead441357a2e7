"""Prompt checkpoints: ``config.json`` + ``prompts.safetensors`` + a generated ``README.md``.

Only prompt tensors are saved (kilobytes), never the backbone. Loading is
strict: an unknown ``format_version``, unknown or missing tensors, a wrong
shape or a different backbone width is an error that names the problem.
Nothing pickled is ever executed: Dassl ``.pth.tar`` files go through
``dassl_import``'s restricted reader.

Tensors in ``prompts.safetensors``:

- ``text_ctx`` [n_ctx, text width] - always;
- ``visual_prompts`` [n, vision width] - only when the visual prompts are learnable;
- ``combine.query`` [E], ``combine.score_gain`` [] - the combination network (teacher "ranked");
- ``teacher.features`` [C, E] - a cache of the teacher text features used in training.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .backbone import Backbone
from .calibration import Calibration, CalibrationError
from .ckpt_config import (  # noqa: F401 (FORMAT_VERSION, METHODS, library_versions: re-exported)
    FORMAT_VERSION,
    METHODS,
    CheckpointConfig,
    library_versions,
    new_config,
)
from .errors import InputError
from .hub import HF_PREFIX, download_file, parse_hub_id
from .integrity import config_problem, finite_json, tensor_problem
from .model import BiomedDPT
from .presets import Preset, load_preset
from .visual import VisualPromptConfig

log = logging.getLogger(__name__)

CONFIG_NAME, TENSORS_NAME, CARD_NAME = "config.json", "prompts.safetensors", "README.md"
TENSOR_KEYS = ("text_ctx", "visual_prompts", "combine.query", "combine.score_gain", "teacher.features")
REQUIRED_CONFIG = ("format_version", "method", "backbone", "class_names", "template", "n_ctx",
                   "visual_prompts", "teacher")
BIOMEDCOOP_TEMPLATE, BIOMEDCOOP_N_CTX = "a photo of a {}.", 4


class CheckpointError(InputError):
    """A checkpoint cannot be used; the message says exactly why."""


@dataclass
class PromptCheckpoint:
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    source: str = ""  # where it was loaded from (id as given)

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def template(self) -> str:
        return self.config["template"]

    @property
    def n_ctx(self) -> int:
        return int(self.config["n_ctx"])

    @property
    def preset(self) -> str | None:
        return self.config.get("preset")

    @property
    def teacher_mode(self) -> str:
        return self.config["teacher"]["mode"]

    @property
    def settings(self) -> CheckpointConfig:
        """The config as the frozen dataclass (``config`` is its JSON form)."""
        return CheckpointConfig.from_dict(self.config)

    @property
    def class_position(self) -> str:
        """Where the class word-piece sits: "end", or the reference's "middle" (method.md section 2)."""
        return self.config.get("class_token_position") or "end"

    @property
    def calibration(self) -> Calibration | None:
        """The stored temperature and conformal thresholds; None when not calibrated."""
        block = self.config.get("calibration")
        return None if block is None else Calibration.from_config(block)

    @property
    def visual(self) -> VisualPromptConfig:
        v = self.config["visual_prompts"]
        return VisualPromptConfig(n_prompts=int(v["count"]), layout=v["layout"], learnable=bool(v["learnable"]))

    def build_model(self, backbone: Backbone, class_names: list[str] | None = None) -> BiomedDPT:
        """The model with this context; ``class_names`` may differ (novel classes, edited classes)."""
        check_backbone(self, backbone)
        model = BiomedDPT(backbone, class_names or self.class_names, self.template, self.n_ctx,
                          self.visual, ctx=self.tensors["text_ctx"], class_position=self.class_position)
        if "visual_prompts" in self.tensors:
            with torch.no_grad():
                model.image_encoder.prompts.copy_(self.tensors["visual_prompts"].to(backbone.device))
        return model


# ----------------------------------------------------------------------------------------- saving

def make_config(
    model: BiomedDPT,
    *,
    method: str = "biomed-dpt",
    preset: Preset | None = None,
    teacher: dict[str, Any] | None = None,
    loss_weights: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    data_description: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of a model (teacher: at least ``{"mode": "mean"|"ranked"}``); see ``ckpt_config``."""
    v = model.image_encoder.config
    pl = model.prompt_learner
    return new_config(
        method=method, backbone=model.backbone.spec, backbone_revision=model.backbone.revision,
        backbone_random_weights=model.backbone.random_weights, text_width=model.backbone.text_width,
        embed_dim=model.backbone.embed_dim, preset=preset.name if preset else None,
        modality=preset.modality if preset else None, organ=preset.organ if preset else None,
        class_names=model.class_names, template=pl.template,
        templates=(extra or {}).get("templates") or (preset.templates if preset else [pl.template]),
        n_ctx=pl.n_ctx, ctx_init=pl.ctx_init, class_token_position=pl.class_position,
        visual_prompts={"count": v.n_prompts, "layout": v.layout, "learnable": v.learnable},
        teacher=teacher or {"mode": "mean"}, loss_weights=loss_weights or {}, training=training or {},
        data=data or {}, metrics=metrics or {}, data_description=data_description,
        extra={k: val for k, val in (extra or {}).items() if k != "templates"},
    ).to_dict()


def save_checkpoint(
    out_dir: str | Path,
    model: BiomedDPT,
    config: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write config.json, prompts.safetensors and the model card into ``out_dir``."""
    tensors = {"text_ctx": model.prompt_learner.ctx}
    if model.image_encoder.config.learnable:
        tensors["visual_prompts"] = model.image_encoder.prompts
    tensors.update(extra_tensors or {})
    return write_checkpoint(PromptCheckpoint(config, tensors), out_dir)


# ----------------------------------------------------------------------------------------- loading

def validate(ckpt: PromptCheckpoint) -> None:
    """Strict structural checks that need no backbone."""
    cfg, tensors = ckpt.config, ckpt.tensors
    if cfg.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"unknown format_version {cfg.get('format_version')!r}; this version reads {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_CONFIG if k not in cfg]
    if missing:
        raise CheckpointError(f"config.json lacks {', '.join(missing)}")
    if cfg["method"] not in METHODS:
        raise CheckpointError(f"unknown method {cfg['method']!r}")
    if problem := config_problem(cfg) or tensor_problem(tensors):  # types and finite values, field named
        raise CheckpointError(problem)
    unknown = sorted(set(tensors) - set(TENSOR_KEYS))
    if unknown:
        raise CheckpointError(f"unknown tensors in {TENSORS_NAME}: {', '.join(unknown)}")
    if "text_ctx" not in tensors:
        raise CheckpointError(f"{TENSORS_NAME} lacks text_ctx")
    ctx = tensors["text_ctx"]
    if ctx.ndim != 2 or ctx.shape[0] != int(cfg["n_ctx"]):
        raise CheckpointError(f"text_ctx has shape {list(ctx.shape)}, config says n_ctx={cfg['n_ctx']}")
    vp = cfg["visual_prompts"]
    if bool(vp.get("learnable")) != ("visual_prompts" in tensors):
        raise CheckpointError("visual_prompts tensor present iff the config says the prompts are learnable")
    if "visual_prompts" in tensors and tensors["visual_prompts"].shape[0] != int(vp["count"]):
        raise CheckpointError(f"visual_prompts has {tensors['visual_prompts'].shape[0]} rows, config says {vp['count']}")
    if ("combine.query" in tensors) != ("combine.score_gain" in tensors):
        raise CheckpointError("combine.query and combine.score_gain come together")
    if "teacher.features" in tensors and tensors["teacher.features"].shape[0] != len(cfg["class_names"]):
        raise CheckpointError("teacher.features has one row per class")
    if not cfg["class_names"]:
        raise CheckpointError("config.json names no classes")
    if cfg.get("class_token_position", "end") not in ("end", "middle"):
        raise CheckpointError(f"class_token_position must be end or middle, not {cfg['class_token_position']!r}")
    try:
        VisualPromptConfig(int(vp["count"]), vp["layout"], bool(vp["learnable"]))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"bad visual_prompts settings: {exc}") from exc
    if cfg.get("calibration") is not None:  # absent or null: not calibrated
        try:
            Calibration.from_config(cfg["calibration"])
        except CalibrationError as exc:
            raise CheckpointError(str(exc)) from exc


def check_backbone(ckpt: PromptCheckpoint, backbone: Backbone) -> None:
    """Width checks against the backbone the checkpoint will run on."""
    ctx = ckpt.tensors["text_ctx"]
    if ctx.shape[1] != backbone.text_width:
        raise CheckpointError(
            f"text_ctx width {ctx.shape[1]} does not match the backbone's text width {backbone.text_width} "
            f"(checkpoint made for {ckpt.config.get('backbone')})"
        )
    vp = ckpt.tensors.get("visual_prompts")
    if vp is not None and vp.shape[1] != backbone.vision_width:
        raise CheckpointError(f"visual_prompts width {vp.shape[1]} does not match the backbone's {backbone.vision_width}")
    for key in ("combine.query",):
        if key in ckpt.tensors and ckpt.tensors[key].shape[-1] != backbone.embed_dim:
            raise CheckpointError(f"{key} width does not match the backbone's embedding size {backbone.embed_dim}")
    if "teacher.features" in ckpt.tensors and ckpt.tensors["teacher.features"].shape[-1] != backbone.embed_dim:
        raise CheckpointError(f"teacher.features width does not match the backbone's embedding size {backbone.embed_dim}")


def read_folder(folder: str | Path, source: str = "") -> PromptCheckpoint:
    folder = Path(folder)
    cfg_path, t_path = folder / CONFIG_NAME, folder / TENSORS_NAME
    if not cfg_path.is_file() or not t_path.is_file():
        raise CheckpointError(f"{source or folder}: a checkpoint folder needs {CONFIG_NAME} and {TENSORS_NAME}")
    return _read_files(cfg_path, t_path, source or str(folder))


# Prompt checkpoints are kilobytes (a context, a few visual prompts, a teacher cache); these caps
# leave ample room and keep a typed id from making the server fetch or parse anything large.
MAX_CONFIG_BYTES = 2**20
MAX_TENSORS_BYTES = 64 * 2**20
MAX_DASSL_BYTES = 2**30  # a reference Dassl file may hold a whole model; only its context is read


def _read_files(cfg_path: Path, t_path: Path, source: str) -> PromptCheckpoint:
    for path, cap in ((cfg_path, MAX_CONFIG_BYTES), (t_path, MAX_TENSORS_BYTES)):
        if path.stat().st_size > cap:
            raise CheckpointError(f"{source}: {path.name} is larger than {cap // 2**20} MB; not a prompt checkpoint")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: unreadable {CONFIG_NAME} ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: {CONFIG_NAME} is not a JSON object")
    try:
        tensors = load_file(str(t_path), device="cpu")
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{source}: unreadable {TENSORS_NAME} ({exc})") from exc
    ckpt = PromptCheckpoint(config, tensors, source)
    validate(ckpt)
    return ckpt


def is_dassl_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return ".pth.tar" in base or base.endswith((".pth", ".pt"))


def load_checkpoint(ckpt_id: str, preset: str | None = None, method: str | None = None,
                    backbone_spec: str | None = None, token: str | bool | None = None) -> PromptCheckpoint:
    """Load a checkpoint from a local folder, ``hf-hub:ORG/REPO[/SUB][@REV]`` or a ``.pth.tar``.

    ``preset`` (and ``method``) are needed only for Dassl files, which do not
    record their template or classes.
    """
    ckpt_id = str(ckpt_id).strip()
    if ckpt_id.startswith(HF_PREFIX):
        ref = parse_hub_id(ckpt_id)
        if is_dassl_file(ref.path):
            return import_dassl(download_file(ref, token=token, max_bytes=MAX_DASSL_BYTES), preset, method,
                                backbone_spec, source=ckpt_id)
        cfg_path = download_file(ref, CONFIG_NAME, token=token, max_bytes=MAX_CONFIG_BYTES)
        t_path = download_file(ref, TENSORS_NAME, token=token, max_bytes=MAX_TENSORS_BYTES)
        return _read_files(cfg_path, t_path, ckpt_id)
    path = Path(ckpt_id).expanduser()
    if path.is_dir():
        return read_folder(path, ckpt_id)
    if path.is_file() and is_dassl_file(path.name):
        return import_dassl(path, preset, method, backbone_spec, source=ckpt_id)
    raise CheckpointError(f"no checkpoint at {ckpt_id!r}: expected a folder, hf-hub:ORG/REPO[/SUB][@REV] or a .pth.tar file")


def import_dassl(path: str | Path, preset: str | None, method: str | None = None,
                 backbone_spec: str | None = None, source: str = "",
                 class_position: str | None = None) -> PromptCheckpoint:
    """A checkpoint from a reference Biomed-DPT or BiomedCoOp Dassl file (teacher ``mean``).

    ``class_position`` defaults to what those files were trained with: ``middle`` for the
    reference Biomed-DPT (its scripts never reached the option), ``end`` for BiomedCoOp.
    """
    from .backbone import DEFAULT_BACKBONE
    from .dassl_import import read_dassl_context

    if not preset:
        raise CheckpointError("a Dassl .pth.tar file records no classes or template: name its preset")
    method = (method or "biomed-dpt").lower().replace("biomeddpt", "biomed-dpt")
    if method not in METHODS:
        raise CheckpointError(f"method must be biomeddpt or biomedcoop, not {method!r}")
    p = load_preset(preset)
    ctx = read_dassl_context(path)  # restricted unpickler: nothing in the file is executed
    if method == "biomedcoop":
        template, n_ctx = BIOMEDCOOP_TEMPLATE, BIOMEDCOOP_N_CTX
        visual = {"count": 0, "layout": "reference", "learnable": False}  # BiomedCoOp has no visual prompts
    else:
        template, n_ctx = p.template, p.n_ctx
        visual = {"count": 4, "layout": "reference", "learnable": False}
    if ctx.shape[0] != n_ctx:
        raise CheckpointError(f"the file's context has {ctx.shape[0]} tokens; {method} on {p.name} uses {n_ctx}")
    position = class_position or ("end" if method == "biomedcoop" else "middle")
    config = new_config(
        method=method, backbone=backbone_spec or DEFAULT_BACKBONE, preset=p.name, modality=p.modality,
        organ=p.organ, class_names=p.classes, template=template, templates=p.templates, n_ctx=n_ctx,
        ctx_init=None, class_token_position=position, visual_prompts=visual, teacher={"mode": "mean"},
        loss_weights={"l1": p.weights("few_shot").l1, "kl": p.weights("few_shot").kl},
        training={"imported_from": Path(source or str(path)).name, "class_position": position},
        data_description=f"Imported from a {method} Dassl checkpoint; see its original publication.",
    ).to_dict()
    ckpt = PromptCheckpoint(config, {"text_ctx": ctx}, source or str(path))
    validate(ckpt)
    return ckpt


def write_checkpoint(ckpt: PromptCheckpoint, out_dir: str | Path) -> Path:
    """Write an in-memory checkpoint (e.g. an imported one) as a folder."""
    from .model_card import render_model_card

    out = Path(out_dir)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in ckpt.tensors.items()}
    validate(PromptCheckpoint(ckpt.config, tensors))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / TENSORS_NAME),
              metadata={"format_version": str(FORMAT_VERSION)})
    config = finite_json(ckpt.config)  # NaN metrics become null: JSON has no NaN
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    (out / CARD_NAME).write_text(render_model_card(config), encoding="utf-8")
    return out
