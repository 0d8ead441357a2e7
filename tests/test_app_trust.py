"""The Predict tab's trust surface: calibrated probabilities or "not calibrated", the set, faithfulness."""
from pathlib import Path

import gradio as gr
import pytest
import torch

from app import formatting as fmt
from app.choices import PREDICTED, ZERO_SHOT
from app.predict.handlers import PredictController
from app.services import Services
from app.session import add_trained, new_session_state, session_dir
from dpt_core.calibration import fit_calibration
from dpt_core.checkpoint import make_config, save_checkpoint
from dpt_core.model import BiomedDPT

CLASSES = ["cat scan", "dog scan", "bird scan"]


@pytest.fixture(scope="module")
def services(tiny) -> Services:
    return Services(tiny)


@pytest.fixture(scope="module")
def ctl(services) -> PredictController:
    return PredictController(services)


def _checkpoint(services, folder: Path, n_calibration: int | None) -> Path:
    model = BiomedDPT(services.backbone, CLASSES, "a photo of a {}.", 4)
    extra = {}
    if n_calibration:
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(n_calibration, 3, generator=gen) * 10
        labels = torch.randint(0, 3, (n_calibration,), generator=gen)
        extra["calibration"] = fit_calibration(logits, labels, source="test").to_config()
    return save_checkpoint(folder, model, make_config(model, extra=extra))


@pytest.fixture
def state():
    return new_session_state()


def _predict(ctl, state, path, ct_path):
    table = ctl.on_checkpoint(str(path), "btmri", ctl.preset_table("btmri"), state)["table"]
    return ctl.on_predict(ct_path, 0, "custom", str(path), table, state), table


def test_calibrated_checkpoint_shows_calibrated_probabilities_and_the_set(ctl, services, state, ct_path):
    folder = _checkpoint(services, session_dir(state) / "cal", 40)
    add_trained(state, "calibrated", folder)
    out, _ = _predict(ctl, state, folder, ct_path)
    md, pred = out["calibration_md"], out["pred_state"]
    assert "**Calibrated probabilities**" in md and "%" in md
    assert "With 90% coverage on images like the 40 calibration images: {" in md
    assert set(pred.calibrated_probs) == set(CLASSES) and pred.prediction in pred.prediction_set.classes


def test_coverage_is_picked_and_redrawn_without_recomputing(ctl, services, state, ct_path, monkeypatch):
    folder = _checkpoint(services, session_dir(state) / "cov", 40)
    add_trained(state, "cov", folder)
    table = ctl.on_checkpoint(str(folder), "btmri", ctl.preset_table("btmri"), state)["table"]
    out = ctl.on_predict(ct_path, 0, "custom", str(folder), table, state, 0.95)
    md, pred = out["calibration_md"], out["pred_state"]
    assert "With 95% coverage on images like the 40 calibration images" in md and pred.prediction_set.coverage == 0.95
    assert "With 80% coverage" in ctl.on_coverage(0.8, pred)
    assert pred.set_at(0.8).classes == pred.calibration.prediction_set(
        torch.tensor([pred.calibrated_probs[c] for c in CLASSES]), CLASSES, 0.8).classes
    assert len(pred.set_at(0.8).classes) <= len(pred.set_at(0.95).classes)  # more coverage, never a smaller set
    with pytest.raises(gr.Error, match="(?i)coverage must be one of 0.8, 0.9, 0.95"):
        ctl.on_coverage(0.5, pred)
    monkeypatch.setenv("DPT_ALLOW_LOCAL_CHECKPOINTS", "1")  # the API takes a local folder only on a private server
    _, details = ctl.api_predict(ct_path, "custom", str(folder), "\n".join(CLASSES), coverage=0.8)
    assert details["prediction_set"]["coverage"] == 0.8 and details["prediction_set"]["n_calibration"] == 40


def test_too_few_calibration_images_says_so(ctl, services, state, ct_path):
    folder = _checkpoint(services, session_dir(state) / "few", 6)
    add_trained(state, "few", folder)
    md = _predict(ctl, state, folder, ct_path)[0]["calibration_md"]
    assert "needs at least 9 calibration images" in md and "calibrated on 6" in md and "{" not in md


def test_uncalibrated_says_not_calibrated(ctl, services, state, ct_path):
    folder = _checkpoint(services, session_dir(state) / "plain", None)
    add_trained(state, "plain", folder)
    assert "**Not calibrated**" in _predict(ctl, state, folder, ct_path)[0]["calibration_md"]
    zero = ctl.on_predict(ct_path, 0, "btmri", ZERO_SHOT, ctl.preset_table("btmri"), None)["calibration_md"]
    assert "**Not calibrated**" in zero and "zero-shot" in zero


def test_faithfulness_checkbox_adds_one_line_under_the_overlay(ctl, ct_path):
    table = ctl.preset_table("btmri")
    out = ctl.on_explain(ct_path, 0, "btmri", ZERO_SHOT, table, None, "gradcam", PREDICTED, "", 0.5)
    plain, expl = out["caption"], out["expl_state"]
    assert "deletion AUC" not in plain and expl.faithfulness is None
    for method in ("gradcam", "rollout"):
        out = ctl.on_explain(ct_path, 0, "btmri", ZERO_SHOT, table, None, method, PREDICTED, "", 0.5, True)
        caption, expl = out["caption"], out["expl_state"]
        assert "not lesion localisation" in caption
        assert "deletion AUC" in caption and "for random order" in caption and expl.faithfulness.steps == 4
    out = ctl.on_explain(ct_path, 0, "btmri", ZERO_SHOT, table, None, "gradcam", PREDICTED,
                         "a bright round mass", 0.5, True)
    caption, expl = out["caption"], out["expl_state"]
    assert expl.target == "a bright round mass" and "deletion AUC" in caption


def test_api_functions_add_the_trust_fields(ctl, ct_path):
    _, details = ctl.api_predict(ct_path, "btmri")
    assert details["calibrated_probs"] is None and details["prediction_set"] is None
    _, info = ctl.api_explain(ct_path, "btmri", faithfulness=True)
    assert set(info["faithfulness"]) == {"deletion_auc", "random_auc", "steps"}
    _, info = ctl.api_explain(ct_path, "btmri")
    assert "faithfulness" not in info and info["note"] == fmt.ATTENTION_NOTE
