"""Threat: non-finite or mistyped values that pass validation and poison results later.

``train --lr nan`` exited 0 and wrote a bare ``NaN`` into config.json (invalid JSON); a
checkpoint with a NaN context loaded and "predicted"; a seed of 10**30 passed validation
and failed later; ``n_ctx: "4; …"`` failed without naming the field.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from dpt_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dpt_core.integrity import finite_json
from dpt_core.losses import LossWeights
from dpt_core.model import BiomedDPT
from dpt_core.presets import load_preset
from dpt_core.train import TrainConfig


@pytest.fixture
def checkpoint_folder(tiny, tmp_path):
    p = load_preset("btmri")
    model = BiomedDPT(tiny, p.classes, p.template, p.n_ctx)
    from dpt_core.checkpoint import make_config

    cfg = make_config(model, preset=p, teacher={"mode": "mean"}, loss_weights={"l1": 1.0, "kl": 0.5},
                      metrics={"accuracy": float("nan"), "loss": float("inf")})
    return save_checkpoint(tmp_path / "ck", model, cfg)


@pytest.mark.parametrize("field, value", [
    ("lr", float("nan")), ("lr", float("inf")), ("lr", -0.1), ("lr", 0.0), ("momentum", float("nan")),
    ("weight_decay", float("-inf")), ("warmup_lr", float("nan")), ("seed", 10**30), ("seed", -1),
])
def test_training_settings_must_be_finite_and_in_range(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("weights", [LossWeights(float("nan"), 0.0), LossWeights(0.0, float("inf")), LossWeights(-1, 0)])
def test_loss_weights_must_be_finite(weights):
    with pytest.raises(ValueError, match="loss weight"):
        TrainConfig(loss_weights=weights)


def test_config_json_never_holds_nan(checkpoint_folder):
    text = (checkpoint_folder / "config.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    cfg = json.loads(text)  # strict JSON
    assert cfg["metrics"] == {"accuracy": None, "loss": None}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_context_does_not_load(checkpoint_folder, value):
    tensors = load_file(str(checkpoint_folder / "prompts.safetensors"))
    tensors["text_ctx"][0, 0] = value
    save_file(tensors, str(checkpoint_folder / "prompts.safetensors"))
    with pytest.raises(CheckpointError, match="text_ctx.*NaN or infinite"):
        load_checkpoint(str(checkpoint_folder))


@pytest.mark.parametrize("field, value", [
    ("n_ctx", "4; rm -rf /"), ("n_ctx", 4.5), ("n_ctx", True), ("class_names", [{"a": 1}, None]),
    ("class_names", "glioma"), ("template", 7), ("loss_weights", {"l1": "x"}), ("visual_prompts", []),
])
def test_mistyped_config_fields_are_named(checkpoint_folder, field, value):
    cfg = json.loads((checkpoint_folder / "config.json").read_text())
    cfg[field] = value
    (checkpoint_folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(str(checkpoint_folder))


def test_a_nan_dassl_context_is_refused(tmp_path):
    from collections import OrderedDict

    from dpt_core.checkpoint import import_dassl

    ctx = torch.randn(4, 64)
    ctx[1, 2] = float("nan")
    path = tmp_path / "model.pth.tar-100"
    torch.save({"state_dict": OrderedDict([("prompt_learner.ctx", ctx)])}, path)
    with pytest.raises(CheckpointError, match="NaN"):
        import_dassl(path, "busi", "biomedcoop", "tiny")


def test_finite_json_replaces_every_non_finite_number():
    doc = finite_json({"a": [1.0, math.nan, {"b": -math.inf}], "c": (2, math.inf), "d": "NaN"})
    assert json.dumps(doc, allow_nan=False) == '{"a": [1.0, null, {"b": null}], "c": [2, null], "d": "NaN"}'


@pytest.mark.parametrize("field, value", [("seed", 10**30), ("seed", -5), ("seed", float("inf")), ("lr", float("nan")),
                                          ("kl", float("inf"))])
def test_the_few_shot_tab_names_bad_settings(field, value):
    from dpt_core.errors import FewShotError
    from dpt_core.fewshot import TrainSettings

    with pytest.raises(FewShotError, match="Advanced settings"):
        TrainSettings(**{field: value}).checked()


def test_backbone_weights_with_nan_do_not_load(tmp_path):
    from dpt_core.backbone import BackboneError, load_backbone
    from dpt_core.localdir import write_tiny_backbone

    spec = write_tiny_backbone(tmp_path / "bb")
    weights = tmp_path / "bb" / "open_clip_model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim == 2)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(BackboneError, match="NaN or infinite"):
        load_backbone(spec, "cpu")
