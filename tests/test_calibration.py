"""Temperature scaling, ECE, split-conformal sets and the checkpoint's calibration block."""
import json
import math

import pytest
import torch
from conftest import SYNTH_CLASSES, synthetic_set

from dpt_core.calibration import (
    COVERAGES,
    Calibration,
    CalibrationError,
    evaluation_metrics,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    softmax,
)
from dpt_core.conformal import conformal_threshold, min_calibration_images, prediction_sets, set_metrics


def sampled_task(n: int, n_classes: int = 4, true_t: float = 5.0, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_t): T = true_t is the right answer."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n_classes, generator=gen) * 20.0
    labels = torch.multinomial(torch.softmax(logits / true_t, dim=-1), 1, generator=gen).squeeze(1)
    return logits, labels


# ------------------------------------------------------------------------------ pure maths

def test_temperature_recovers_the_true_one():
    logits, labels = sampled_task(4000, true_t=5.0)
    assert fit_temperature(logits, labels) == pytest.approx(5.0, rel=0.1)


def test_temperature_minimises_the_nll():
    logits, labels = sampled_task(500, true_t=3.0, seed=1)
    t = fit_temperature(logits, labels)

    def nll(temp):
        return float(torch.nn.functional.cross_entropy(logits / temp, labels))

    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1)) + 1e-9


def test_ece_of_a_hand_computed_case():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])
    # bin of 0.9: accuracy 0.5 -> |0.5 - 0.9| * 0.5; bin of 0.6: accuracy 1.0 -> |1.0 - 0.6| * 0.5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2 + 0.2)


def test_temperature_lowers_ece_of_an_over_confident_model():
    logits, labels = sampled_task(2000, true_t=8.0, seed=2)
    cal = fit_calibration(logits[:1000], labels[:1000])
    fresh_before = expected_calibration_error(softmax(logits[1000:]), labels[1000:])
    fresh_after = expected_calibration_error(cal.probs(logits[1000:]), labels[1000:])
    assert cal.ece_after < cal.ece_before and fresh_after < fresh_before * 0.5


def test_minimum_number_of_calibration_images():
    assert [min_calibration_images(c) for c in (0.8, 0.9, 0.95)] == [4, 9, 19]  # n >= 1/alpha - 1
    scores = torch.linspace(0, 1, 9)
    assert conformal_threshold(scores[:8], 0.9) is None
    assert conformal_threshold(scores, 0.9) == pytest.approx(1.0)  # k = ceil(10 * 0.9) = 9: the largest


def test_conformal_coverage_over_many_random_splits():
    """Marginal coverage on fresh images, averaged over random calibration/test splits, is >= nominal."""
    logits, labels = sampled_task(3000, n_classes=5, true_t=6.0, seed=3)
    gen = torch.Generator().manual_seed(0)
    for coverage in COVERAGES:
        hits = []
        for _ in range(100):
            perm = torch.randperm(len(labels), generator=gen)
            cal_idx, test_idx = perm[:50], perm[50:550]
            cal = fit_calibration(logits[cal_idx], labels[cal_idx], coverages=[coverage])
            member = prediction_sets(cal.probs(logits[test_idx]), cal.threshold(coverage))
            hits.append(set_metrics(member, labels[test_idx])["set_coverage"])
        assert sum(hits) / len(hits) >= coverage - 0.02, coverage


def test_sets_are_never_empty_and_hold_the_top_class():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33]])
    member = prediction_sets(probs, threshold=0.1)  # no class reaches p >= 0.9 ...
    assert member.sum(1).tolist() == [1, 1] and member[:, 0].all()  # ... so only the top class


def test_too_few_calibration_images_gives_the_message_and_no_set():
    logits, labels = sampled_task(6, n_classes=3, seed=4)
    cal = fit_calibration(logits, labels)
    assert cal.threshold(0.9) is None and cal.threshold(0.8) is not None  # 6 < 9, 6 >= 4
    s = cal.prediction_set(cal.probs(logits[:1])[0], ["a", "b", "c"], 0.9)
    assert s.classes is None and "needs at least 9 calibration images" in s.message and "calibrated on 6" in s.message
    assert s.to_json()["classes"] is None and s.describe() == s.message
    s80 = cal.prediction_set(cal.probs(logits[:1])[0], ["a", "b", "c"], 0.8)
    assert s80.classes and "With 80% coverage on images like the 6 calibration images: {" in s80.describe()
    m = evaluation_metrics(logits, labels, cal, 0.9)
    assert m["set_coverage"] is None and "needs at least 9" in m["set_message"]


def test_evaluation_metrics_keys():
    logits, labels = sampled_task(40, seed=5)
    assert set(evaluation_metrics(logits, labels, None)) == {"ece", "ece_uncalibrated"}
    cal = fit_calibration(logits, labels)
    m = evaluation_metrics(logits, labels, cal, 0.9)
    assert {"ece", "set_coverage", "mean_set_size", "coverage"} <= set(m)
    assert 0 <= m["ece"] <= 1 and 1 <= m["mean_set_size"] <= 4 and 0 <= m["set_coverage"] <= 1


# ------------------------------------------------------------------------------ the stored block

def test_block_round_trips_through_json():
    logits, labels = sampled_task(30, seed=6)
    cal = fit_calibration(logits, labels, source="30 images")
    back = Calibration.from_config(json.loads(json.dumps(cal.to_config())))
    assert back == cal


@pytest.mark.parametrize("change, message", [
    ({"temperature": float("nan")}, "finite"),
    ({"temperature": -1.0}, "outside"),
    ({"n_calibration": 0}, "positive integer"),
    ({"n_calibration": 2.5}, "positive integer"),
    ({"thresholds": {"0.9": float("inf")}}, "finite"),
    ({"thresholds": {"1.5": 0.2}}, "bad coverage"),
    ({"thresholds": {"0.9": 1.2}}, r"is not in \[0, 1\]"),
    ({"thresholds": {}}, "non-empty"),
    ({"ece_after": float("nan")}, "finite"),
])
def test_bad_blocks_are_rejected(change, message):
    block = {**fit_calibration(*sampled_task(30, seed=7)).to_config(), **change}
    with pytest.raises(CalibrationError, match=message):
        Calibration.from_config(block)


def test_checkpoint_load_validates_the_block(tiny, tmp_path):
    from dpt_core.checkpoint import CheckpointError, make_config, read_folder, save_checkpoint
    from dpt_core.model import BiomedDPT

    model = BiomedDPT(tiny, SYNTH_CLASSES, "a photo of a {}.", 4)
    save_checkpoint(tmp_path / "plain", model, make_config(model))
    assert read_folder(tmp_path / "plain").calibration is None  # no block: not calibrated
    block = fit_calibration(*sampled_task(20, n_classes=3, seed=8)).to_config()
    save_checkpoint(tmp_path / "cal", model, make_config(model, extra={"calibration": block}))
    assert read_folder(tmp_path / "cal").calibration.n_calibration == 20
    cfg = json.loads((tmp_path / "cal" / "config.json").read_text())
    cfg["calibration"]["temperature"] = "hot"
    (tmp_path / "cal" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="temperature must be a finite number"):
        read_folder(tmp_path / "cal")


# ------------------------------------------------------------------------------ the synthetic tiny task

@pytest.fixture(scope="module")
def tiny_task(tiny):
    """Logits of the tiny zero-shot model on 3 x 20 synthetic images (encoded once)."""
    from dpt_core.features import encode_images
    from dpt_core.model import BiomedDPT

    data = synthetic_set(20, seed=11)
    model = BiomedDPT(tiny, SYNTH_CLASSES, "a photo of a {}.", 4).eval()
    with torch.no_grad():
        logits = model(image_features=encode_images(model, data.images)).logits
    return logits, data.labels


def test_tiny_task_coverage_and_ece_on_fresh_images(tiny_task):
    logits, labels = tiny_task
    gen = torch.Generator().manual_seed(1)
    coverage, hits, before, after = 0.8, [], [], []
    for _ in range(200):
        perm = torch.randperm(len(labels), generator=gen)
        cal_idx, test_idx = perm[:24], perm[24:]
        cal = fit_calibration(logits[cal_idx], labels[cal_idx])
        member = prediction_sets(cal.probs(logits[test_idx]), cal.threshold(coverage))
        hits.append(set_metrics(member, labels[test_idx])["set_coverage"])
        before.append(expected_calibration_error(softmax(logits[test_idx]), labels[test_idx]))
        after.append(expected_calibration_error(cal.probs(logits[test_idx]), labels[test_idx]))
    mean = sum(hits) / len(hits)
    assert mean >= coverage - 0.03, mean
    assert sum(after) / len(after) <= sum(before) / len(before), (sum(after), sum(before))
    assert all(math.isfinite(a) for a in after)


def test_calibrate_runs_the_model_on_labelled_images(tiny):
    from dpt_core.calibration import calibrate
    from dpt_core.model import BiomedDPT

    model = BiomedDPT(tiny, SYNTH_CLASSES, "a photo of a {}.", 4).eval()
    cal = calibrate(model, synthetic_set(3, seed=12), source="9 images")
    assert cal.n_calibration == 9 and cal.source == "9 images" and cal.threshold(0.9) is not None
    assert cal.threshold(0.95) is None  # 9 < 19
