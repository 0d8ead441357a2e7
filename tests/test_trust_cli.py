"""train --holdout stores a calibration; predict and evaluate surface calibrated probabilities and sets."""
import json

import numpy as np
import pytest
from conftest import class_image
from conftest import run_cli as run

from dpt_core.cli import main

BTMRI = ["glioma_tumor", "meningioma_tumor", "pituitary_tumor", "normal_brain"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust_imgs")
    for c, name in enumerate(BTMRI):
        (root / name).mkdir()
        for i in range(4):
            class_image(c, 10 * c + i).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def calibrated(folder, tiny_dir, tmp_path_factory):
    """A checkpoint trained with half of each class held out: 8 calibration images."""
    out = tmp_path_factory.mktemp("ck") / "ck"
    code = main(["train", "--backbone", tiny_dir, "--preset", "btmri", "--data", str(folder), "--shots", "4",
                 "--epochs", "1", "--views", "1", "--seed", "1", "--out", str(out), "--holdout", "0.5"])
    assert code == 0
    return out


def test_holdout_stores_the_calibration_block(calibrated):
    cfg = json.loads((calibrated / "config.json").read_text())
    cal = cfg["calibration"]
    assert cal["n_calibration"] == 8 and cfg["training"]["n_train_images"] == 8
    assert np.isfinite(cal["temperature"]) and cal["temperature"] > 0
    assert cal["thresholds"]["0.8"] is not None  # 8 >= 4
    assert cal["thresholds"]["0.9"] is None and cal["thresholds"]["0.95"] is None  # 8 < 9, 8 < 19
    m = cfg["metrics"]
    assert m["heldout_images"] == 8 and 0 <= m["heldout_accuracy"] <= 1
    assert m["heldout_ece_before"] == pytest.approx(cal["ece_before"], abs=1e-4)


def test_train_json(capsys, folder, tiny_dir, tmp_path):
    code, out, _ = run(capsys, "train", "--backbone", tiny_dir, "--preset", "btmri", "--data", folder, "--shots", "4",
                       "--epochs", "1", "--views", "1", "--out", tmp_path / "ck", "--holdout", "0.25", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["checkpoint"] == str(tmp_path / "ck") and doc["calibration"]["n_calibration"] == 4
    assert doc["metrics"]["heldout_images"] == 4


def test_holdout_errors_are_one_line(capsys, folder, tiny_dir, tmp_path):
    code, _, err = run(capsys, "train", "--backbone", tiny_dir, "--preset", "btmri", "--data", folder, "--shots", "1",
                       "--epochs", "1", "--views", "1", "--out", tmp_path / "x", "--holdout", "0.5")
    assert code == 1 and err.strip().splitlines()[-1] == "error: a held-out check needs at least 2 images in every class"
    code, _, err = run(capsys, "train", "--backbone", tiny_dir, "--preset", "btmri", "--data", folder, "--shots", "4",
                       "--epochs", "1", "--out", tmp_path / "y", "--holdout", "1.5")
    assert code == 1 and "error: --holdout must be a fraction" in err


def test_predict_json_has_calibrated_probs_and_sets(capsys, folder, calibrated, tiny_dir):
    img = folder / "glioma_tumor" / "0.png"
    code, out, _ = run(capsys, "predict", img, "--backbone", tiny_dir, "--checkpoint", calibrated, "--json",
                       "--coverage", "0.8")
    assert code == 0
    r = json.loads(out)["results"][0]
    assert sum(r["calibrated_probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert max(r["calibrated_probs"], key=r["calibrated_probs"].get) == r["prediction"]  # T keeps the order
    s = r["prediction_set"]
    assert s["coverage"] == 0.8 and s["n_calibration"] == 8 and r["prediction"] in s["classes"]
    # The default 90 %: too few calibration images -> the message, no set.
    code, out, _ = run(capsys, "predict", img, "--backbone", tiny_dir, "--checkpoint", calibrated, "--json")
    s = json.loads(out)["results"][0]["prediction_set"]
    assert s["classes"] is None and "needs at least 9 calibration images" in s["message"]
    code, out, _ = run(capsys, "predict", img, "--backbone", tiny_dir, "--checkpoint", calibrated)
    assert "No prediction set: 90% coverage needs at least 9" in out and "calibrated: " in out


def test_edited_classes_are_not_calibrated(capsys, folder, calibrated, tiny_dir, tmp_path):
    (tmp_path / "c.txt").write_text("glioma tumor\nnormal brain\n")
    code, out, _ = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", tiny_dir,
                       "--checkpoint", calibrated, "--classes-file", tmp_path / "c.txt")
    assert code == 0 and "not calibrated for these classes" in out
    code, out, _ = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", "tiny",
                       "--checkpoint", calibrated)
    assert code == 0 and "not calibrated for this backbone" in out  # same width, another backbone


def test_evaluate_json_adds_ece_and_set_metrics(capsys, folder, calibrated, tiny_dir):
    code, out, _ = run(capsys, "evaluate", "--backbone", tiny_dir, "--checkpoint", calibrated, "--data", folder,
                       "--json", "--coverage", "0.8")
    assert code == 0
    doc = json.loads(out)
    assert 0 <= doc["ece"] <= 1 and 0 <= doc["ece_uncalibrated"] <= 1
    assert 0 <= doc["set_coverage"] <= 1 and 1 <= doc["mean_set_size"] <= 4 and doc["coverage"] == 0.8


def test_bad_calibration_block_is_a_one_line_error(capsys, folder, calibrated, tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(calibrated, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["calibration"]["thresholds"]["0.8"] = float("nan")
    (bad / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", tiny_dir,
                       "--checkpoint", bad)
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: calibration.thresholds[0.8] must be a finite")


def test_validation_records_draw_at_most_four_per_class():
    from dpt_core.data import ImageRecord, validation_records

    recs = [ImageRecord(f"{c}_{i}.png", c, str(c)) for c in range(3) for i in range(10)]
    for shots, per_class in ((1, 1), (2, 2), (16, 4)):
        got = validation_records(recs, recs, shots, seed=1)
        assert [sum(r.label == c for r in got) for c in range(3)] == [per_class] * 3


def test_validation_draw_continues_the_train_draws_stream():
    """The reference seeds once, draws the train set, then the validation set from the same stream."""
    import random

    from dpt_core.data import ImageRecord, validation_records

    train = [ImageRecord(f"t{c}_{i}.png", c, str(c)) for i in range(10) for c in (2, 0, 1)]
    val = [ImageRecord(f"v{c}_{i}.png", c, str(c)) for i in range(6) for c in (1, 2, 0)]

    def reference(items, k):  # group by label in order of first appearance, then sample per group
        groups: dict[int, list] = {}
        for r in items:
            groups.setdefault(r.label, []).append(r)
        return [x for g in groups.values() for x in (random.sample(g, k) if len(g) >= k else g)]

    for seed, shots in ((1, 2), (2, 8), (3, 1)):
        random.seed(seed)
        reference(train, shots)
        assert validation_records(train, val, shots, seed) == reference(val, min(shots, 4))


def test_calibrate_checkpoint_stores_the_block(tiny, tmp_path):
    from conftest import SYNTH_CLASSES, synthetic_set

    from dpt_core.calibration import calibrate_checkpoint
    from dpt_core.checkpoint import make_config, read_folder, save_checkpoint
    from dpt_core.model import BiomedDPT

    model = BiomedDPT(tiny, SYNTH_CLASSES, "a photo of a {}.", 4)
    folder = save_checkpoint(tmp_path / "run", model, make_config(model))
    cal = calibrate_checkpoint(folder, tiny, synthetic_set(3, seed=5), source="validation split, 3 per class")
    stored = read_folder(folder).calibration
    assert stored == cal and stored.n_calibration == 9 and stored.source == "validation split, 3 per class"
    with pytest.raises(ValueError, match="not the checkpoint's"):
        data = synthetic_set(1, seed=6)
        data.class_names = list(reversed(SYNTH_CLASSES))
        calibrate_checkpoint(folder, tiny, data)


def test_model_card_reports_the_calibration(calibrated):
    card = (calibrated / "README.md").read_text()
    assert "## Calibration" in card and "fitted on 8 held-out images" in card
    assert "Conformal prediction sets available at: 80%." in card
