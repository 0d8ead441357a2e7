"""The checkpoint's ``config.json`` as one frozen dataclass, built in one place.

Every checkpoint - trained by the CLI, the sweep or the app, or imported from a
Dassl file - gets its config from ``new_config``, so the fields cannot drift
between writers. ``to_dict`` gives the on-disk JSON of design.md (the same keys
as before, plus the run fields below); ``from_dict`` reads it back.

What a training run records (the contract ``aggregate``, ``publish`` and the
sweep's resume rely on):

- ``training``: ``protocol`` (``few_shot`` | ``base2novel``), ``shots``, ``seed``,
  ``epochs``, ``batch_size``, ``steps_per_epoch``, ``class_position``,
  ``history`` (per epoch: ``epoch``, ``lr`` and the loss parts), plus the
  optimiser settings of ``TrainConfig``;
- ``data``: ``split_file``, ``split_sha256``, ``train_images`` (paths relative
  to the image folder, in draw order) - empty for an image-folder run;
- ``metrics``: ``accuracy`` (few-shot) or ``base_accuracy``, ``novel_accuracy``,
  ``harmonic_mean`` (base-to-novel).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

FORMAT_VERSION = 1
METHODS = ("biomed-dpt", "biomedcoop")
PROTOCOLS = ("few_shot", "base2novel")

# Keys of config.json in their on-disk order; ``extra`` keys follow them.
_ORDER = ("format_version", "method", "backbone", "backbone_revision", "backbone_random_weights", "text_width",
          "embed_dim", "preset", "modality", "organ", "class_names", "template", "templates", "n_ctx", "ctx_init",
          "class_token_position", "visual_prompts", "teacher", "loss_weights", "training", "data", "metrics",
          "data_description", "versions", "created")


@dataclass(frozen=True)
class CheckpointConfig:
    """What a prompt checkpoint records; ``to_dict()`` is its ``config.json``."""

    method: str  # "biomed-dpt" or "biomedcoop"
    backbone: str  # backbone spec it was trained on
    class_names: tuple[str, ...]  # label order
    template: str  # the clinical template the context replaces the opening of
    n_ctx: int  # context tokens
    visual_prompts: Mapping[str, Any]  # {"count", "layout", "learnable"}
    teacher: Mapping[str, Any] = field(default_factory=lambda: {"mode": "mean"})
    backbone_revision: str | None = None
    backbone_random_weights: bool = False
    text_width: int | None = None
    embed_dim: int | None = None
    preset: str | None = None
    modality: str | None = None
    organ: str | None = None
    templates: tuple[str, ...] = ()  # the template ensemble (prompt bank); defaults to (template,)
    ctx_init: str | None = None  # the word-pieces the context started from (None: imported)
    class_token_position: str = "end"  # "end" or the reference's "middle"
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # {"l1", "kl"}
    training: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    data_description: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. descriptions_hash
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``config.json`` (plain dicts and lists)."""
        values = {
            "format_version": self.format_version, "method": self.method, "backbone": self.backbone,
            "backbone_revision": self.backbone_revision, "backbone_random_weights": self.backbone_random_weights,
            "text_width": self.text_width, "embed_dim": self.embed_dim, "preset": self.preset,
            "modality": self.modality, "organ": self.organ, "class_names": list(self.class_names),
            "template": self.template, "templates": list(self.templates or (self.template,)),
            "n_ctx": self.n_ctx, "ctx_init": self.ctx_init, "class_token_position": self.class_token_position,
            "visual_prompts": dict(self.visual_prompts), "teacher": dict(self.teacher),
            "loss_weights": dict(self.loss_weights), "training": dict(self.training), "data": dict(self.data),
            "metrics": dict(self.metrics), "data_description": self.data_description,
            "versions": dict(self.versions), "created": self.created,
        }
        out = {k: values[k] for k in _ORDER}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "CheckpointConfig":
        """Read a ``config.json`` object (missing optional keys take their defaults)."""
        known = {k: raw[k] for k in _ORDER if k in raw}
        for key in ("class_names", "templates"):
            if key in known:
                known[key] = tuple(known[key])
        extra = {k: v for k, v in raw.items() if k not in _ORDER}
        return cls(**known, extra=extra)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers a checkpoint produces."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "open-clip-torch", "timm", "transformers", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def new_config(**fields: Any) -> CheckpointConfig:
    """The one builder: a config with the library versions and creation time filled in."""
    if fields.get("method", "biomed-dpt") not in METHODS:
        raise ValueError(f"unknown method {fields.get('method')!r}")
    position = fields.get("class_token_position", "end")
    if position not in ("end", "middle"):
        raise ValueError(f"class position must be end or middle, not {position!r}")
    fields.setdefault("versions", library_versions())
    fields.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    for key in ("class_names", "templates"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return CheckpointConfig(**fields)


def run_fields(*, protocol: str, shots: int | None, seed: int, epochs: int, batch_size: int,
               steps_per_epoch: int, class_position: str, history: list[dict]) -> dict[str, Any]:
    """The ``training`` fields every run records, checked once here."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    return {"protocol": protocol, "shots": shots, "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "steps_per_epoch": steps_per_epoch, "class_position": class_position,
            "history": [dict(h) for h in history]}


def is_complete_run(raw: Mapping[str, Any]) -> bool:
    """Whether a config.json is a finished run with its metrics (the sweep's resume rule)."""
    tr, metrics = raw.get("training") or {}, raw.get("metrics") or {}
    if not isinstance(tr, Mapping) or not isinstance(metrics, Mapping) or tr.get("stopped_early"):
        return False
    if tr.get("protocol") == "base2novel":
        needed = ("base_accuracy", "novel_accuracy", "harmonic_mean")
    else:
        needed = ("accuracy",)
    return all(isinstance(metrics.get(k), (int, float)) for k in needed) and bool(tr.get("history"))
