"""``train --holdout F --json``: the app's few-shot run from the command line, same code, same result."""
import json

import numpy as np
import pytest
import torch
from conftest import BTMRI, class_image
from PIL import Image

from dpt_core.checkpoint import read_folder
from dpt_core.cli import main
from dpt_core.data import LabelledImages, few_shot, scan_image_folder
from dpt_core.fewshot import TrainSettings, run_fewshot
from dpt_core.workflow import setup_classes


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 images for each btmri class: enough for a held-out check (one image per class)."""
    root = tmp_path_factory.mktemp("holdout_imgs")
    for c, name in enumerate(BTMRI):
        (root / name.replace(" ", "_")).mkdir()
        for i in range(4):
            class_image(c, 10 * c + i).save(root / name.replace(" ", "_") / f"{i}.png")
    return root


def _train(capsys, folder, out, *extra):
    code = main(["train", "--backbone", "tiny", "--preset", "btmri", "--data", str(folder), "--shots", "4",
                 "--epochs", "2", "--views", "1", "--seed", "3", "--out", str(out), *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_holdout_json_is_the_tabs_run(capsys, folder, tmp_path, tiny):
    code, out, err = _train(capsys, folder, tmp_path / "cli", "--holdout", "0.25", "--json")
    assert code == 0, err
    obj = json.loads(out)
    assert set(obj) == {"checkpoint", "holdout", "metrics", "calibration"}
    assert obj["calibration"]["n_calibration"] == 4 and obj["metrics"]["heldout_images"] == 4
    held = obj["holdout"]
    assert held["n_images"] == 4  # one of the four images of each class
    for part in ("adapted", "zero_shot"):
        assert set(held[part]) == {"accuracy", "per_class"} and 0 <= held[part]["accuracy"] <= 1
        assert list(held[part]["per_class"]) == BTMRI
    assert "held-out check on 4 images" in err

    # The library call the Few-shot tab makes, with the same settings: the same checkpoint and check.
    setup = setup_classes("btmri")
    names, records = scan_image_folder(folder, setup.class_names)
    data = LabelledImages.from_records(few_shot(records, 4, 3), names)  # the CLI's draw
    settings = TrainSettings(epochs=2, views=1, lr=0.0025, batch_size=4, l1=setup.loss_weights.l1,
                             kl=setup.loss_weights.kl, seed=3, holdout=0.25)
    lib = run_fewshot(tiny, setup, data, settings, tmp_path / "lib")
    assert lib.check.to_json() == held
    a, b = read_folder(obj["checkpoint"]).tensors, read_folder(lib.folder).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # what a calibration needs: the adapted prompt's held-out logits and the labels
    assert lib.check.adapted_logits.shape == (4, 4) and sorted(lib.check.labels.tolist()) == [0, 1, 2, 3]  # one per class, in the draw's order
    assert lib.check.adapted_logits.argmax(1).eq(lib.check.labels).float().mean().item() == pytest.approx(
        held["adapted"]["accuracy"])


def test_holdout_without_enough_images_is_an_error(capsys, tmp_path):
    small = tmp_path / "small"
    for c, name in enumerate(BTMRI):
        (small / name).mkdir(parents=True)
        Image.fromarray(np.asarray(class_image(c, 0))).save(small / name / "0.png")
    code, out, err = _train(capsys, small, tmp_path / "ck", "--holdout", "0.25", "--json")
    assert code == 1 and out == "" and err.splitlines()[-1] == "error: a held-out check needs at least 2 images in every class"
    assert not (tmp_path / "ck").exists()


def test_holdout_errors_are_one_line(capsys, folder, tmp_path):
    for extra in (["--holdout", "0.25", "--exact"], ["--holdout", "1.5"]):
        code, out, err = _train(capsys, folder, tmp_path / "x", *extra)
        lines = err.splitlines()
        assert code == 1 and out == "" and "Traceback" not in err, err
        assert lines[-1].startswith("error: ") and all(line.startswith("warning: ") for line in lines[:-1]), err
