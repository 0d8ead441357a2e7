"""The CLI contract, offline, on a local-dir backbone written by the test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli as run
from PIL import Image

from dpt_core.cli import main

REPO = Path(__file__).resolve().parent.parent
BTMRI = ["glioma_tumor", "meningioma_tumor", "pituitary_tumor", "normal_brain"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(BTMRI):
        (root / name).mkdir()
        for i in range(3):
            a = rng.integers(0, 80, (64, 64, 3)).astype(np.uint8)
            a[..., c % 3] += 100
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(folder, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "ck"
    code = main(["train", "--backbone", tiny_dir, "--preset", "btmri", "--data", str(folder), "--shots", "2",
                 "--epochs", "2", "--views", "1", "--seed", "1", "--out", str(out), "--teacher", "ranked"])
    assert code == 0
    return out


def test_train_writes_a_checkpoint(trained, tiny_dir):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["backbone"] == tiny_dir and cfg["preset"] == "btmri" and cfg["teacher"]["mode"] == "ranked"
    assert cfg["training"]["epochs"] == 2 and cfg["training"]["mode"] == "fast"
    assert cfg["loss_weights"] == {"l1": 12.5, "kl": 0.25}  # btmri few-shot weights


def test_predict_json_contract(capsys, folder, trained, tiny_dir):
    img = folder / "glioma_tumor" / "0.png"
    code, out, err = run(capsys, "predict", img, "--backbone", tiny_dir, "--checkpoint", trained, "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"backbone", "checkpoint", "classes", "results"}
    assert doc["classes"] == ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
    r = doc["results"][0]
    assert set(r) == {"image", "prediction", "probs", "logits", "calibrated_probs", "prediction_set", "contributions"}
    assert r["calibrated_probs"] is None and r["prediction_set"] is None  # trained without --holdout
    assert r["prediction"] == doc["classes"][int(np.argmax(r["logits"]))]
    assert abs(sum(r["probs"].values()) - 1) < 1e-5
    assert set(r["contributions"]["sources"]) == {"learned", "templates", "descriptions"}
    p = r["contributions"]["prompts"][0]
    assert set(p) == {"class", "source", "text", "weight", "contribution"}
    assert "random weights" in err


def test_predict_without_checkpoint_uses_the_template(capsys, folder, tiny_dir):
    code, out, _ = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", tiny_dir,
                       "--preset", "btmri", "--json")
    assert code == 0 and json.loads(out)["checkpoint"] is None


def test_classes_file_wins(capsys, folder, tiny_dir, tmp_path):
    (tmp_path / "c.txt").write_text("cat\ndog\n\n")
    code, out, _ = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", tiny_dir,
                       "--preset", "btmri", "--classes-file", tmp_path / "c.txt", "--json")
    assert json.loads(out)["classes"] == ["cat", "dog"]


def test_evaluate_json_contract(capsys, folder, trained, tiny_dir):
    code, out, _ = run(capsys, "evaluate", "--backbone", tiny_dir, "--checkpoint", trained, "--data", folder, "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"accuracy", "per_class", "confusion_matrix", "loss", "ece", "ece_uncalibrated"}
    assert 0 <= doc["accuracy"] <= 1 and set(doc["loss"]) == {"ce", "l1", "kl", "total"}
    assert np.array(doc["confusion_matrix"]).sum() == 12


def test_backbone_flag_wins_with_a_warning(capsys, folder, trained):
    code, out, err = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", "tiny",
                         "--checkpoint", trained, "--json")
    assert code == 0 and "differs from the checkpoint" in err and json.loads(out)["backbone"] == "tiny"


@pytest.mark.slow
def test_base_to_novel_on_a_split_file(capsys, folder, tiny_dir, tmp_path):
    items = {"train": [], "test": []}
    for label, name in enumerate(BTMRI):
        for i in range(3):
            items["train" if i < 2 else "test"].append([f"{name}/{i}.png", label, name.replace("_", " ")])
    (folder / "split_BTMRI.json").write_text(json.dumps(items))
    try:
        code, out, err = run(capsys, "train", "--backbone", tiny_dir, "--preset", "btmri", "--data", folder,
                             "--shots", "2", "--epochs", "1", "--views", "1", "--out", tmp_path / "b2n",
                             "--protocol", "base2novel")
    finally:
        (folder / "split_BTMRI.json").unlink()
    assert code == 0, err
    cfg = json.loads((tmp_path / "b2n" / "config.json").read_text())
    assert cfg["class_names"] == ["glioma tumor", "meningioma tumor"]  # the base half
    m = cfg["metrics"]
    a, b = m["base_accuracy"], m["novel_accuracy"]
    assert m["harmonic_mean"] == pytest.approx(0 if a + b == 0 else 2 * a * b / (a + b))
    assert cfg["loss_weights"] == {"l1": 25.0, "kl": 0.5}  # btmri base-to-novel weights


def test_import_dassl(capsys, tmp_path, tiny):
    ctx = torch.randn(4, tiny.text_width)
    torch.save({"state_dict": {"prompt_learner.ctx": ctx}, "epoch": 100, "optimizer": {}, "scheduler": {}},
               tmp_path / "model.pth.tar-100")
    code, out, _ = run(capsys, "import-dassl", tmp_path / "model.pth.tar-100", "--preset", "kvasir",
                       "--method", "biomedcoop", "--backbone", "tiny", "--out", tmp_path / "imp")
    assert code == 0 and Path(out.strip()) == tmp_path / "imp"
    cfg = json.loads((tmp_path / "imp" / "config.json").read_text())
    assert cfg["method"] == "biomedcoop" and cfg["teacher"] == {"mode": "mean"} and cfg["n_ctx"] == 4


def test_errors_are_one_line(capsys, folder):
    code, _, err = run(capsys, "predict", folder / "normal_brain" / "1.png", "--backbone", "tiny", "--preset", "nope")
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: unknown preset")
    code, _, err = run(capsys, "predict", __file__, "--backbone", "tiny", "--preset", "btmri")
    assert code == 1 and err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err


def test_write_backbone_tiny(capsys, tmp_path):
    code, out, _ = run(capsys, "write-backbone", "--kind", "tiny", "--out", tmp_path / "bb")
    assert code == 0 and out.strip() == f"local-dir:{tmp_path / 'bb'}"
    assert (tmp_path / "bb" / "text" / "config.json").is_file()


@pytest.mark.slow
def test_module_entry_point_runs_offline_from_another_directory(folder, tiny_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "dpt_core", "predict", str(folder / "pituitary_tumor" / "2.png"),
                           "--backbone", tiny_dir, "--preset", "btmri", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["prediction"] in {"glioma tumor", "meningioma tumor",
                                                                    "pituitary tumor", "normal brain"}


def test_aggregate_means_over_seeds_then_datasets(capsys, tmp_path):
    def ck(preset, shots, seed, metrics, protocol="few_shot"):
        d = tmp_path / protocol / preset / f"shots_{shots}" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"method": "biomed-dpt", "preset": preset, "metrics": metrics,
                                                   "training": {"protocol": protocol, "shots": shots, "seed": seed}}))
    ck("btmri", 1, 1, {"accuracy": 0.5})
    ck("btmri", 1, 2, {"accuracy": 0.7})  # mean 60
    ck("busi", 1, 1, {"accuracy": 0.8})  # 80 -> K=1 mean 70
    ck("btmri", 16, 1, {"base_accuracy": 0.9, "novel_accuracy": 0.6}, "base2novel")
    code, out, _ = run(capsys, "aggregate", tmp_path, "--json")
    few, b2n = (next(g[k] for g in json.loads(out)["groups"] if k in g) for k in ("few_shot", "base2novel"))
    assert few["shots"]["1"]["mean"] == pytest.approx(70.0)
    assert few["shots"]["1"]["per_dataset"]["btmri"] == pytest.approx(60.0)
    assert b2n["hm"] == pytest.approx(2 * 90 * 60 / 150)
    code, out, _ = run(capsys, "aggregate", tmp_path)
    assert "| **mean** |" in out and "paper (v1)" in out


def test_usage_mistakes_are_one_error_line_with_status_1(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--preset", "btmri", "--data", "x", "--shots", "1", "--out", "y", "--class-position", "top"])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "--class-position" in err


def test_train_progress_prints_each_epochs_mean_loss(capsys, folder, tiny_dir, tmp_path):
    code, _, err = run(capsys, "train", "--backbone", tiny_dir, "--preset", "btmri", "--data", folder, "--shots", "3",
                       "--epochs", "2", "--views", "1", "--seed", "1", "--out", tmp_path / "ck")
    assert code == 0
    history = json.loads((tmp_path / "ck" / "config.json").read_text())["training"]["history"]
    printed = [float(line.split("loss ")[1].split()[0]) for line in err.splitlines() if line.startswith("epoch ")]
    assert printed == [round(h["total"], 4) for h in history]  # the mean the history records, not the last step's
