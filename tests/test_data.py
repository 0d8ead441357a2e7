"""Image folders, split files, few-shot sampling."""
import json

import pytest
from PIL import Image

from dpt_core.data import DataError, few_shot, match_class_folders, read_split_file, scan_image_folder


def _folder(root, names, n=3):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_subfolders_follow_the_preset_label_order(tmp_path):
    classes = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
    root = _folder(tmp_path, ["Normal_Brain", "glioma_tumor", "MENINGIOMA_TUMOR", "pituitary_tumor"])
    names, records = scan_image_folder(root, classes)
    assert names == classes
    assert {r.path.parent.name: r.label for r in records}["Normal_Brain"] == 3


def test_unmatched_subfolders_are_sorted(tmp_path):
    names, records = scan_image_folder(_folder(tmp_path, ["zebra", "apple_pie"]), ["cat", "dog"])
    assert names == ["apple pie", "zebra"]
    assert len(records) == 6


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError):
        scan_image_folder(tmp_path)


def test_split_file(tmp_path):
    _folder(tmp_path / "imgs", ["a", "b"])
    split = {"train": [["imgs/a/0.png", 0, "a"], ["imgs/b/0.png", 1, "b"]], "test": [["imgs/b/1.png", 1, "b"]]}
    (tmp_path / "split_X.json").write_text(json.dumps(split))
    names, recs = read_split_file(tmp_path, "split_X.json", "test")
    assert names == ["a", "b"] and recs[0].label == 1 and recs[0].path.is_file()
    with pytest.raises(DataError, match="val"):
        read_split_file(tmp_path, "split_X.json", "val")


def test_few_shot_is_per_seed_and_per_class(tmp_path):
    _, records = scan_image_folder(_folder(tmp_path, ["a", "b"], n=10))
    s1, s1b, s2 = few_shot(records, 4, 1), few_shot(records, 4, 1), few_shot(records, 4, 2)
    assert s1 == s1b and s1 != s2
    assert [r.label for r in s1].count(0) == 4 and [r.label for r in s1].count(1) == 4
    assert len(few_shot(records, 50, 1)) == 20  # fewer than K: all of them


def test_folder_matching_is_one_rule_for_folders_and_zips():
    from dpt_core.data import folder_labels, folders_as_classes

    # '_' as a space and any case; a folder naming no class is left out (a zip reports it as skipped)
    assert folder_labels(["Glioma_Tumor", "normal brain", "misc"], ["normal brain", "glioma tumor"]) == {
        "Glioma_Tumor": 1, "normal brain": 0}
    assert folders_as_classes(["b_x", "a"]) == (["a", "b x"], {"a": 0, "b_x": 1})
    # a folder tree takes the given classes only when every folder names one of them
    assert match_class_folders(["glioma_tumor", "misc"], ["glioma tumor"]) == (["glioma tumor", "misc"],
                                                                               {"glioma_tumor": 0, "misc": 1})
