"""Faithful-recipe pieces of the model zoo, without Ray: BiomedCoOp's data layout, Dassl's few-shot
draw, the reference's "middle" class position, the checkpoint config, import-descriptions,
aggregate grouping and the registry's picker functions."""
from __future__ import annotations

import json
import random
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from biomedcoop_bench import DATASETS, write_dataset

from dpt_core import data as data_module
from dpt_core.checkpoint import import_dassl, load_checkpoint, make_config, read_folder, save_checkpoint
from dpt_core.ckpt_config import CheckpointConfig, is_complete_run
from dpt_core.cli import main
from dpt_core.data import DataError, few_shot, find_split_file, read_split_file
from dpt_core.model import BiomedDPT
from dpt_core.presets import load_preset
from dpt_core.registry import (
    RegistryEntry,
    checkpoint_choices,
    default_checkpoint,
    grouped_by_preset,
    merge_entries,
    picker_label,
)
from dpt_core.results import aggregate
from dpt_core.train import steps_per_epoch


def dassl_draw(rows: list, shots: int, seed: int) -> list[str]:
    """Dassl's generate_fewshot_dataset on split rows, written out independently of dpt_core."""
    random.seed(seed)
    groups: dict[int, list] = {}
    for rel, label, _ in rows:
        groups.setdefault(label, []).append(rel)
    out: list[str] = []
    for items in groups.values():
        out += random.sample(items, shots) if len(items) >= shots else items
    return out


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("bench"), "busi", n_train=6)


# ------------------------------------------------------------------------------------------- data

def test_split_and_images_in_biomedcoop_layout(busi):
    assert find_split_file(busi) == busi / "split_BUSI.json"
    names, records = read_split_file(busi, None, "train")
    assert names == DATASETS["busi"][1]
    first = records[0]
    assert " (" in first.rel and first.path == busi / "BUSI" / first.rel and first.path.is_file()


def test_missing_image_names_every_path_tried(busi, tmp_path):
    rows = json.loads((busi / "split_BUSI.json").read_text())
    rows["test"].append(["benign_tumor/benign (999).png", 0, "benign tumor"])
    split = busi / "split_missing.json"
    split.write_text(json.dumps(rows))
    with pytest.raises(DataError) as err:
        read_split_file(busi, split, "test")
    message = str(err.value)
    assert "benign (999).png" in message
    assert str(busi / "BUSI" / "benign_tumor/benign (999).png") in message
    assert str(busi / "benign_tumor/benign (999).png") in message


def test_reading_a_split_decodes_no_image(busi, monkeypatch):
    calls = []
    monkeypatch.setattr(data_module, "load_image", lambda *a, **k: calls.append(a))
    read_split_file(busi, None, "train")
    read_split_file(busi, None, "test")
    assert calls == []


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
@pytest.mark.parametrize("shots", [1, 2, 4, 6, 8])
def test_few_shot_draw_is_dassls_rule(busi, seed, shots):
    rows = json.loads((busi / "split_BUSI.json").read_text())["train"]
    _, records = read_split_file(busi, None, "train")
    assert [r.rel for r in few_shot(records, shots, seed)] == dassl_draw(rows, shots, seed)


def test_draw_visits_classes_in_order_of_first_appearance(busi):
    _, records = read_split_file(busi, None, "train")
    drawn = few_shot(records, 2, 1)
    assert [r.label for r in drawn] == [2, 2, 1, 1, 0, 0]  # the split lists label 2 first


@pytest.mark.parametrize("n, batch, steps", [(3, 4, 1), (4, 4, 1), (6, 4, 1), (8, 4, 2), (11, 4, 2), (1, 4, 1)])
def test_steps_per_epoch_drops_the_last_partial_batch(n, batch, steps):
    assert steps_per_epoch(n, batch) == steps


# ------------------------------------------------------------------------------- class position

def _middle_ids(tiny, template: str, class_name: str, n_ctx: int) -> torch.Tensor:
    """Token ids of the reference's middle prompt at initialisation, rebuilt from word-pieces."""
    pieces = tiny.tokenizer.pieces(template.format(class_name))
    half = n_ctx // 2
    moved = pieces[:half] + [pieces[n_ctx]] + pieces[half:n_ctx] + pieces[n_ctx + 1:]
    hf = tiny.tokenizer.hf
    return torch.tensor([[hf.cls_token_id, *hf.convert_tokens_to_ids(moved), hf.sep_token_id]])


def test_middle_prompt_at_init_is_the_reordered_template(tiny):
    p = load_preset("btmri")
    model = BiomedDPT(tiny, p.classes, p.template, p.n_ctx, class_position="middle")
    got = model.encode_prompts()
    for i, name in enumerate(p.classes):
        ids = _middle_ids(tiny, p.template, name, p.n_ctx)
        plain = F.normalize(tiny.clip.text(ids), dim=-1)[0]  # open_clip's own text forward on token ids
        assert torch.allclose(got[i], plain, atol=1e-5), name
    end = BiomedDPT(tiny, p.classes, p.template, p.n_ctx).encode_prompts()
    assert not torch.allclose(got, end, atol=1e-3)


def test_middle_moves_the_first_piece_after_the_context(tiny):
    pieces = tiny.tokenizer.pieces("a MR photo of a glioma tumor in the brain.")
    half = 5 // 2
    moved = pieces[:half] + [pieces[5]] + pieces[half:5] + pieces[6:]
    assert moved[:6] == ["a", "mr", pieces[5], "photo", "of", "a"]


def test_class_position_is_recorded_and_honoured(tiny, tmp_path):
    p = load_preset("btmri")
    model = BiomedDPT(tiny, p.classes, p.template, p.n_ctx, class_position="middle")
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.01 * torch.randn_like(model.prompt_learner.ctx))
    folder = save_checkpoint(tmp_path / "ck", model, make_config(model, preset=p))
    ckpt = read_folder(folder)
    assert ckpt.config["class_token_position"] == "middle" and ckpt.class_position == "middle"
    assert ckpt.settings.class_token_position == "middle" and ckpt.settings.preset == "btmri"
    assert torch.allclose(ckpt.build_model(tiny).encode_prompts(), model.encode_prompts(), atol=1e-6)


def _dassl_file(path, ctx):
    sd = OrderedDict([("prompt_learner.ctx", ctx)])
    torch.save({"state_dict": sd, "epoch": 100, "optimizer": {"state": {}}, "scheduler": None}, path)
    return path


def test_import_dassl_class_position_defaults(tiny, tmp_path):
    f5 = _dassl_file(tmp_path / "dpt.pth.tar-100", torch.randn(5, tiny.text_width))
    f4 = _dassl_file(tmp_path / "coop.pth.tar-100", torch.randn(4, tiny.text_width))
    assert import_dassl(f5, "btmri", "biomeddpt", "tiny").class_position == "middle"
    assert import_dassl(f4, "btmri", "biomedcoop", "tiny").class_position == "end"
    assert import_dassl(f5, "btmri", "biomeddpt", "tiny", class_position="end").class_position == "end"
    assert load_checkpoint(str(f5), preset="btmri").class_position == "middle"


def test_cli_import_dassl_class_position_flag(tiny, tmp_path, capsys):
    f5 = _dassl_file(tmp_path / "dpt.pth.tar-100", torch.randn(5, tiny.text_width))
    assert main(["import-dassl", str(f5), "--preset", "btmri", "--backbone", "tiny", "--out", str(tmp_path / "a")]) == 0
    assert main(["import-dassl", str(f5), "--preset", "btmri", "--backbone", "tiny", "--class-position", "end",
                 "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert read_folder(tmp_path / "a").class_position == "middle"
    assert read_folder(tmp_path / "b").class_position == "end"


# ---------------------------------------------------------------------------------- config dataclass

def test_checkpoint_config_round_trips_and_keeps_the_on_disk_keys(tiny):
    p = load_preset("busi")
    raw = make_config(BiomedDPT(tiny, p.classes, p.template, p.n_ctx), preset=p, metrics={"accuracy": 0.5},
                      extra={"descriptions_hash": "abc"})
    for key in ("format_version", "method", "backbone", "preset", "modality", "organ", "class_names", "template",
                "templates", "n_ctx", "ctx_init", "class_token_position", "visual_prompts", "teacher",
                "loss_weights", "training", "data", "metrics", "versions", "created", "descriptions_hash"):
        assert key in raw, key
    cfg = CheckpointConfig.from_dict(raw)
    assert cfg.to_dict() == raw
    with pytest.raises(Exception):
        cfg.method = "x"  # frozen


def test_complete_run_rule():
    base = {"training": {"protocol": "few_shot", "history": [{"epoch": 1}]}, "metrics": {"accuracy": 0.4}}
    assert is_complete_run(base)
    assert not is_complete_run({**base, "metrics": {}})
    assert not is_complete_run({**base, "training": {"protocol": "few_shot", "history": [], "stopped_early": False}})
    b2n = {"training": {"protocol": "base2novel", "history": [{}]}, "metrics": {"base_accuracy": 0.5}}
    assert not is_complete_run(b2n)


# ----------------------------------------------------------------------------- import-descriptions

REFERENCE_FILE = '''
import os
os.system("touch {marker}")
open("{marker}", "w").write("executed")

ZERO_SHOT_TEMPLATES = {{"x": compute()}}

BIOMEDDPT_TEMPLATES = {{
    "glioma_tumor": [{glioma}],
    "Normal Brain": ["a normal brain looks symmetric.", "no mass is seen."],
    "made up class": ["never matched."],
}}
'''


def test_import_descriptions_parses_without_running(tmp_path, capsys):
    marker = tmp_path / "ran"
    glioma = ", ".join(f'"glioma sentence {i}."' for i in range(60))
    src = tmp_path / "prompt_templates.py"
    src.write_text(REFERENCE_FILE.format(marker=marker, glioma=glioma))
    code = main(["import-descriptions", str(src), "--out", str(tmp_path / "bank.json")])
    out, err = capsys.readouterr()
    assert code == 0 and not marker.exists()
    bank = json.loads((tmp_path / "bank.json").read_text())
    assert list(bank) == ["glioma tumor", "normal brain"]
    assert bank["glioma tumor"] == [f"glioma sentence {i}." for i in range(50)]
    assert "made up class" in err


def test_import_descriptions_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "p.py"
    src.write_text("BIOMEDDPT_TEMPLATES = build()\n")
    assert main(["import-descriptions", str(src), "--out", str(tmp_path / "o.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "o.json").exists()


# ------------------------------------------------------------------------------------------ aggregate

def _run_config(root, rel, preset, shots, seed, acc, mode="exact", position="end", epochs=100):
    d = root / rel
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "method": "biomed-dpt", "preset": preset, "backbone": "tiny", "teacher": {"mode": "mean"},
        "class_token_position": position, "metrics": {"accuracy": acc},
        "training": {"protocol": "few_shot", "shots": shots, "seed": seed, "mode": mode, "epochs": epochs,
                     "batch_size": 4, "lr": 0.0025}}))


def test_aggregate_never_averages_different_recipes(tmp_path):
    _run_config(tmp_path, "a/btmri/1", "btmri", 1, 1, 0.5)
    _run_config(tmp_path, "a/btmri/2", "btmri", 2, 1, 0.7)
    _run_config(tmp_path, "b/btmri/1", "btmri", 1, 1, 0.9, mode="fast")
    _run_config(tmp_path, "c/btmri/1", "btmri", 1, 1, 0.1, position="middle")
    _run_config(tmp_path, ".hidden/btmri/1", "btmri", 1, 1, 0.0)  # an unfinished sweep run
    _run_config(tmp_path, "d/btmri/1", "btmri", 1, 2, 0.3, epochs=3)  # a short run: not the paper's recipe
    groups = aggregate(tmp_path)["groups"]
    by = {(g["recipe"]["mode"], g["recipe"]["class_position"], g["recipe"]["epochs"]): g["few_shot"] for g in groups}
    assert set(by) == {("exact", "end", 100), ("fast", "end", 100), ("exact", "middle", 100), ("exact", "end", 3)}
    by = {k[:2]: v for k, v in by.items() if k[2] == 100}
    exact = by[("exact", "end")]
    assert exact["shots"][1]["mean"] == pytest.approx(50.0) and exact["shots"][2]["mean"] == pytest.approx(70.0)
    assert exact["average_over_k"]["mean"] == pytest.approx(60.0)
    assert by[("fast", "end")]["shots"][1]["mean"] == pytest.approx(90.0)


# -------------------------------------------------------------------------------------------- registry

def _entry(id_, preset, method="biomed-dpt", protocol="few_shot", shots=16, seed=1, **metrics):
    return RegistryEntry(id_, f"{method} {preset} {shots}", preset, method, protocol, shots, seed, metrics)


ENTRIES = [
    _entry("coop-btmri", "btmri", method="biomedcoop", seed=None),
    _entry("dpt-btmri-4", "btmri", shots=4, accuracy=0.61),
    _entry("dpt-btmri-16-s2", "btmri", seed=2, accuracy=0.70),
    _entry("dpt-btmri-16-s1", "btmri", accuracy=0.735),
    _entry("dpt-btmri-b2n", "btmri", protocol="base2novel", base_accuracy=0.8, novel_accuracy=0.6,
           harmonic_mean=0.6857),
    _entry("coop-busi", "busi", method="biomedcoop", seed=None),
]


def test_picker_groups_by_preset_and_orders_biomed_dpt_first():
    groups = grouped_by_preset(ENTRIES)
    assert list(groups) == ["btmri", "busi"]
    assert [e.id for e in groups["btmri"]] == ["dpt-btmri-16-s1", "dpt-btmri-16-s2", "dpt-btmri-4", "dpt-btmri-b2n",
                                               "coop-btmri"]
    choices = checkpoint_choices("btmri", ENTRIES)
    assert choices[0][1] == "dpt-btmri-16-s1" and "73.5 %" in choices[0][0]
    assert "base 80.0 %, novel 60.0 %" in picker_label(ENTRIES[4])
    assert "not recorded" in picker_label(ENTRIES[0])


def test_default_is_the_16_shot_seed_1_biomed_dpt_checkpoint_else_zero_shot():
    assert default_checkpoint("btmri", ENTRIES) == "dpt-btmri-16-s1"
    assert default_checkpoint("busi", ENTRIES) is None  # BiomedCoOp only: the zero-shot prompt
    assert default_checkpoint(None, ENTRIES) is None


def test_app_picker_uses_the_registry_default_and_labels(monkeypatch):
    import dpt_core.registry as registry
    from app import choices as predict_tab

    monkeypatch.setattr(registry, "registry_entries", lambda: tuple(ENTRIES))
    choices = predict_tab.checkpoint_choices("btmri", None)
    assert choices[0][1] == predict_tab.ZERO_SHOT and choices[1][1] == "dpt-btmri-16-s1" and "73.5 %" in choices[1][0]
    assert predict_tab.checkpoint_update("btmri", None)["value"] == "dpt-btmri-16-s1"
    assert predict_tab.checkpoint_update("busi", None)["value"] == predict_tab.ZERO_SHOT
    assert predict_tab.checkpoint_update("btmri", None, "/trained/here")["value"] == "/trained/here"


def test_merge_entries_replaces_same_id_and_keeps_the_rest():
    reg = {"_comment": "c", "checkpoints": [{"id": "a", "v": 1}, {"id": "b", "v": 1}]}
    merged = merge_entries(reg, [{"id": "b", "v": 2}, {"id": "c", "v": 2}])
    assert merged["_comment"] == "c"
    assert merged["checkpoints"] == [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "c", "v": 2}]


# ------------------------------------------------------------------------------------ CLI flags

def test_train_on_biomedcoop_layout_records_the_run(busi, tmp_path, capsys):
    code = main(["train", "--backbone", "tiny", "--preset", "busi", "--data", str(busi), "--shots", "2",
                 "--epochs", "1", "--seed", "2", "--class-position", "middle", "--out", str(tmp_path / "ck")])
    capsys.readouterr()
    assert code == 0
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    rows = json.loads((busi / "split_BUSI.json").read_text())["train"]
    assert cfg["class_token_position"] == "middle" and cfg["training"]["class_position"] == "middle"
    assert cfg["data"]["train_images"] == dassl_draw(rows, 2, 2)
    assert (cfg["training"]["shots"], cfg["training"]["seed"], cfg["training"]["steps_per_epoch"]) == (2, 2, 1)
    assert "accuracy" in cfg["metrics"] and read_folder(tmp_path / "ck").class_position == "middle"
    # calibrated on the split's val part: min(K, 4) = 2 per class wanted, the split has 1 per class
    cal = cfg["calibration"]
    assert cal["n_calibration"] == 3 and "validation images" in cal["source"]


def test_predict_class_position_for_the_checkpoint_less_prompt(busi, tiny, capsys):
    from dpt_core.descriptions import resolve_descriptions
    from dpt_core.imageio import load_image
    from dpt_core.predictor import Predictor

    image = next((busi / "BUSI" / "benign_tumor").iterdir())
    logits = {}
    for position in ("end", "middle"):
        assert main(["predict", str(image), "--backbone", "tiny", "--preset", "busi", "--json",
                     "--class-position", position]) == 0
        logits[position] = json.loads(capsys.readouterr().out)["results"][0]["logits"]
    p = load_preset("busi")
    direct = Predictor(tiny, p.classes, p.templates, resolve_descriptions(p.classes, "busi", None),
                       template=p.template, n_ctx=p.n_ctx, class_position="middle")
    assert logits["middle"] == pytest.approx(direct.predict([load_image(image).image])[0].logits, abs=1e-4)
    assert logits["middle"] != pytest.approx(logits["end"], abs=1e-4)


def test_sweep_without_the_dataset_folders_is_one_error_line(busi, tmp_path, capsys):
    code = main(["sweep", "--root", str(busi.parent), "--datasets", "busi,btmri,retina", "--out", str(tmp_path),
                 "--backbone", "tiny"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert "BTMRI, RETINA" in err and "BUSI" not in err.split("folder(s)")[1].split("(")[0]


def test_holdout_run_on_biomedcoop_layout_records_both_parts_of_the_draw(busi, tiny, tmp_path):
    from dpt_core.runs import RunSpec, run_training

    spec = RunSpec(data=str(busi), out=str(tmp_path / "ck"), shots=4, seed=1, preset="busi", epochs=1,
                   exact=False, views=1, holdout=0.5)
    result = run_training(spec, tiny)
    assert result.holdout is not None and "accuracy" in result.test_metrics
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    rows = json.loads((busi / "split_BUSI.json").read_text())["train"]
    trained, held = cfg["data"]["train_images"], cfg["data"]["heldout_images"]
    assert len(trained) == len(held) == 6 and not set(trained) & set(held)
    assert sorted(trained + held) == sorted(dassl_draw(rows, 4, 1))
    assert cfg["training"]["steps_per_epoch"] == 6 // 4 and "calibration" in cfg


def test_cli_train_holdout_uses_the_few_shot_run_on_the_biomedcoop_layout(busi, tmp_path, capsys):
    code = main(["train", "--backbone", "tiny", "--preset", "busi", "--data", str(busi), "--shots", "4",
                 "--epochs", "1", "--seed", "1", "--holdout", "0.5", "--json", "--out", str(tmp_path / "ck")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["holdout"] is not None and (tmp_path / "ck" / "config.json").is_file()


def test_zero_epochs_is_an_error_not_the_paper_recipe(busi, tmp_path, capsys):
    code = main(["train", "--backbone", "tiny", "--preset", "busi", "--data", str(busi), "--shots", "1",
                 "--epochs", "0", "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: ") and "epochs" in last and not (tmp_path / "ck").exists()


def test_resume_refuses_a_finished_run_of_another_recipe(busi, tmp_path, capsys):
    from dpt_core.sweep import SweepError, SweepSpec, plan

    out = tmp_path / "runs" / "few_shot" / "busi" / "shots_1" / "seed_1"
    assert main(["train", "--backbone", "tiny", "--preset", "busi", "--data", str(busi), "--shots", "1",
                 "--epochs", "2", "--seed", "1", "--out", str(out)]) == 0  # fast mode, 2 epochs
    capsys.readouterr()
    same = SweepSpec(root=str(busi.parent), out=str(tmp_path / "runs"), datasets=("busi",), shots=(1,), seeds=(1,),
                     epochs=2, backbone="tiny", exact=False)
    assert plan(same) == ([], ["few_shot/busi/shots_1/seed_1"])  # the same recipe: skipped
    with pytest.raises(SweepError, match=r"epochs 2 \(asked: 100\), mode fast \(asked: exact\)"):
        plan(SweepSpec(root=same.root, out=same.out, datasets=("busi",), shots=(1,), seeds=(1,), backbone="tiny"))
