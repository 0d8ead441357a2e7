"""Finite-value and field checks for whatever comes from outside: checkpoints, settings, JSON.

A NaN learning rate trains "successfully" into a useless checkpoint; a NaN context
"predicts" with null confidences; ``json.dumps`` writes a bare ``NaN``, which is not
JSON. These checks turn each of those into a message that names the field, before
any work is done. They return a problem (or raise ``ValueError``); callers wrap it
into their own error type.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .errors import InputError

SEED_MAX = 2**32 - 1  # numpy and Python's random take seeds up to this; torch more


def tensor_problem(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The first tensor that holds NaN or infinity (or is not a float tensor), else None."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return f"tensor {name!r} is not a floating-point tensor"
        if not bool(torch.isfinite(t).all()):
            return f"tensor {name!r} holds NaN or infinite values"
    return None


def nonfinite_problem(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor holding NaN or infinity (integer buffers are skipped), else None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"tensor {name!r} holds NaN or infinite values"
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def config_problem(cfg: Mapping[str, Any]) -> str | None:
    """Type problems of a checkpoint's ``config.json`` fields that later code relies on, naming the field."""
    n_ctx = cfg.get("n_ctx")
    if not _is_int(n_ctx) or not 1 <= n_ctx <= 64:
        return "config.json: 'n_ctx' must be a whole number from 1 to 64"
    names = cfg.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        return "config.json: 'class_names' must be a list of non-empty strings"
    if not isinstance(cfg.get("template"), str):
        return "config.json: 'template' must be a string"
    if "templates" in cfg and not (isinstance(cfg["templates"], list) and all(isinstance(t, str) for t in cfg["templates"])):
        return "config.json: 'templates' must be a list of strings"
    vp = cfg.get("visual_prompts")
    if not isinstance(vp, dict) or not _is_int(vp.get("count")) or vp.get("count", -1) < 0:
        return "config.json: 'visual_prompts' must be an object with a whole-number 'count'"
    teacher = cfg.get("teacher")
    if not isinstance(teacher, dict) or not isinstance(teacher.get("mode"), str):
        return "config.json: 'teacher' must be an object with a 'mode'"
    lw = cfg.get("loss_weights", {})
    if not isinstance(lw, dict) or not all(_finite_number(v) and v >= 0 for v in lw.values()):
        return "config.json: 'loss_weights' must hold finite numbers >= 0"
    return None


def check_train_settings(*, lr: float, momentum: float, weight_decay: float, warmup_lr: float, seed: int,
                         loss_weights: Mapping[str, float]) -> None:
    """Raise ValueError naming the first training setting that is not a usable finite value."""
    numbers = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "warmup_lr": warmup_lr,
               **{f"loss weight {k}": v for k, v in loss_weights.items()}}
    for name, v in numbers.items():
        if not _finite_number(v) or v < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
    if lr == 0:
        raise InputError("lr must be greater than 0")
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be a whole number from 0 to {SEED_MAX}")


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
