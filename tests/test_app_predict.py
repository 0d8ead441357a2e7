"""Predict tab handlers without a browser: bad inputs give clear messages, happy paths work. Tiny backbone, offline."""
from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import threading
import uuid
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from app import formatting as fmt
from app.choices import PREDICTED, ZERO_SHOT, checkpoint_choices
from app.main import banner_html, build_demo
from app.predict.handlers import PredictController
from app.services import Services
from app.session import (
    add_trained,
    cleanup_session_state,
    new_session_state,
    session_dir,
)
from dpt_core import modality
from dpt_core.backbone import BackboneError
from dpt_core.checkpoint import make_config, save_checkpoint
from dpt_core.descriptions import load_bank
from dpt_core.model import BiomedDPT
from dpt_core.registry import entries_for

REPO = Path(__file__).resolve().parent.parent
# gr.Warning outside a request falls back to warnings.warn; tests that care use pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gradio.helpers")

SECRET_NAME = "Doe^Jane^Secretname"
SECRET_ID = "PID-SECRET-4711"


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def services(tiny) -> Services:
    return Services(tiny)


@pytest.fixture(scope="module")
def ctl(services) -> PredictController:
    return PredictController(services)


@pytest.fixture(scope="module")
def btmri_table(ctl) -> pd.DataFrame:
    return ctl.preset_table("btmri")


def write_dicom(path: Path, frames: int = 1, pixels: bool = True, size: int = 32) -> Path:
    """A small uncompressed DICOM with a patient name and id that must never show up anywhere."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.Modality = "MR"
    ds.BodyPartExamined = "BRAIN"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixels:
        arr = np.full((frames, size, size), 20, dtype=np.uint8)
        for f in range(frames):  # a bright square that moves down one row per frame
            arr[f, f + 4: f + 12, 8:16] = 255
        ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid PNG header claiming side x side pixels, a few dozen bytes (nothing is ever decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


def error_of(fn, *args) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args)
    message = info.value.message
    assert message and "Traceback" not in message and "File \"" not in message
    return message.lower()  # callers match case-insensitively


def predict(ctl, path, table, preset="btmri", checkpoint=ZERO_SHOT, frame=0, state=None):
    return ctl.on_predict(path, frame, preset, checkpoint, table, state)


# ---------------------------------------------------------------------------- start-up

def test_services_are_lazy():
    assert not Services("tiny").loaded  # nothing is built until asked for


@pytest.mark.slow
def test_importing_app_loads_no_backbone():
    code = ("import app, app.main, app.predict.handlers, app.fewshot.layout, app.services, app.session, app.formatting;"
            "from dpt_core import backbone; assert not backbone._CACHE, backbone._CACHE")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_random_weights_banner_for_tiny(services):
    assert "meaningless" in services.banner
    assert "meaningless" in banner_html(services) and 'role="alert"' in banner_html(services)


def test_unreachable_default_falls_back_to_tiny_with_banner(monkeypatch, tiny):
    import app.services as svc

    def fake_load(spec, device=None):
        if spec != "tiny":
            raise BackboneError(f"could not load {spec} from the Hugging Face Hub (OfflineModeIsEnabled). More")
        return tiny

    monkeypatch.setattr(svc, "load_backbone", fake_load)
    monkeypatch.delenv("DPT_BACKBONE", raising=False)
    s = Services()
    assert s.backbone is tiny
    assert "could not be downloaded" in s.banner and "meaningless" in s.banner
    with pytest.raises(BackboneError):  # an explicit, non-default spec that fails is not papered over
        _ = Services("local-dir:/nowhere").backbone


def test_build_demo_has_notice_banner_and_named_endpoints(services):
    demo = build_demo(services)
    html = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.HTML))
    assert "not a medical device, not for diagnosis" in html
    assert "meaningless" in html  # the random-weights banner
    endpoints = demo.get_api_info()["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/predict"]["parameters"]][:2] == ["image", "preset"]
    assert all(p["parameter_has_default"] for p in endpoints["/predict"]["parameters"][2:])
    assert endpoints["/predict"]["returns"][0]["component"] == "Label"
    assert endpoints["/explain"]["returns"][0]["component"] == "Image"
    assert demo.delete_cache and not demo.analytics_enabled


# ---------------------------------------------------------------------------- bad inputs

def _corrupt(tmp: Path) -> Path:
    p = tmp / "corrupt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:400])  # cut short: a valid header, then nothing
    return p


def _text_as_png(tmp: Path) -> Path:
    p = tmp / "notes.png"
    p.write_text("this is a text file, not an image\n" * 20)
    return p


@pytest.mark.parametrize("make, expected", [
    (_corrupt, "damaged"),
    (_text_as_png, "not an image file"),
    (lambda tmp: png_bomb(tmp / "bomb.png"), "20000x20000"),
    (lambda tmp: write_dicom(tmp / "nopixels.dcm", pixels=False), "holds no image"),
])
def test_bad_files_give_clear_messages(ctl, btmri_table, tmp_path, make, expected):
    path = str(make(tmp_path))
    assert expected in error_of(ctl.on_upload, path)
    assert expected in error_of(predict, ctl, path, btmri_table)
    assert expected in error_of(ctl.api_predict, path, "btmri")


def test_missing_upload_and_unknown_preset(ctl, btmri_table, ct_path):
    assert "upload a scan" in error_of(predict, ctl, None, btmri_table).lower()
    assert "unknown preset" in error_of(ctl.api_predict, ct_path, "nonsense")


def _table(names, desc=""):
    return pd.DataFrame([[n, desc] for n in names], columns=fmt.TABLE_HEADERS)


@pytest.mark.parametrize("names, expected", [
    ([], "at least two classes"),
    (["only one"], "at least two classes"),
    (["glioma", "Glioma"], "duplicate class"),
    ([f"class {i}" for i in range(101)], "at most 100 classes"),
])
def test_bad_class_lists(ctl, ct_path, names, expected):
    assert expected in error_of(predict, ctl, ct_path, _table(names), "custom")


def test_row_with_descriptions_but_no_name(ctl, ct_path):
    table = pd.DataFrame([["a", ""], ["", "a finding."], ["b", ""]], columns=fmt.TABLE_HEADERS)
    assert "no class name" in error_of(predict, ctl, ct_path, table, "custom")


def test_too_long_description_is_a_message(ctl, ct_path):
    assert "longer than" in error_of(predict, ctl, ct_path, _table(["a", "b"], "x" * 500), "custom")


@pytest.mark.slow
def test_hundred_classes_work(ctl, ct_path):
    out = predict(ctl, ct_path, _table([f"finding number {i}" for i in range(100)]), "custom")
    assert len(out["label"]) == 100 and abs(sum(out["label"].values()) - 1) < 1e-4


def test_empty_description_is_allowed_and_explained(ctl, ct_path, btmri_table):
    table = btmri_table.copy()
    table.iloc[1, 1] = ""  # meningioma: no descriptions at all
    out = predict(ctl, ct_path, table)
    label, sources, modality_md = out["label"], out["sources"], out["modality_md"]
    assert abs(sum(label.values()) - 1) < 1e-4
    assert set(sources["expert descriptions"]) == {"n/a"}
    assert "no description" in modality_md
    # blank pieces between separators are dropped, not turned into empty prompts
    assert fmt.split_descriptions("a finding. |  | another finding. |") == ["a finding.", "another finding."]


def test_offline_registry_checkpoint_is_a_clear_message(ctl, ct_path, btmri_table):
    entry = entries_for("btmri")[0]
    with pytest.warns(UserWarning, match="Hugging Face Hub") as caught:  # gr.Warning outside a request
        ckpt_update = ctl.on_checkpoint(entry.id, "btmri", btmri_table, None)["checkpoint"]
    assert "zero-shot" in str(caught[0].message) and ckpt_update["value"] == ZERO_SHOT
    assert "hugging face hub" in error_of(predict, ctl, ct_path, btmri_table, "btmri", entry.id)


def test_local_paths_are_refused_as_checkpoint_ids(ctl, tmp_path, ct_path, btmri_table, monkeypatch):
    with pytest.warns(UserWarning, match="hf-hub:"):
        assert ctl.on_checkpoint(str(tmp_path), "btmri", None, None)["checkpoint"]["value"] == ZERO_SHOT
    assert "hf-hub:" in error_of(predict, ctl, ct_path, btmri_table, "btmri", str(tmp_path))
    monkeypatch.setenv("DPT_ALLOW_LOCAL_CHECKPOINTS", "1")  # an operator's private deployment
    assert "needs config.json" in error_of(predict, ctl, ct_path, btmri_table, "btmri", str(tmp_path))


# ---------------------------------------------------------------------------- happy paths

def test_predict_on_a_real_dicom(ctl, ct_path, btmri_table):
    out = predict(ctl, ct_path, btmri_table)
    label, sources, modality_md, contrib_class, plot, table, target, calibration, state = (out[name] for name in (
        "label", "sources", "modality_md", "contrib_class", "contrib_plot", "contrib_table", "target",
        "calibration_md", "pred_state"))
    assert "Not calibrated" in calibration  # the zero-shot prompt has no held-out images
    assert set(label) == set(btmri_table[fmt.CLASS_COL]) and abs(sum(label.values()) - 1) < 1e-4
    assert list(sources.columns) == ["class", "learned prompt", "template ensemble", "expert descriptions"]
    assert contrib_class["value"] == max(label, key=label.get) == state.prediction
    assert len(plot) == 15 and set(plot["source"]) == {"template", "description"}
    assert list(table.columns) == fmt.DETAIL_COLUMNS and table["contribution"].is_monotonic_decreasing
    assert target["value"] == PREDICTED
    # CT_small says Modality CT; btmri expects MRI: the header check says so, even with random weights.
    assert "DICOM header says this is a CT image" in modality_md
    assert "not meaningful" in modality_md
    # another class's contributions, from the kept state (no recomputation)
    other = [c for c in label if c != state.prediction][0]
    redrawn = ctl.on_contrib_class(other, state)
    plot2, table2 = redrawn["contrib_plot"], redrawn["contrib_table"]
    assert len(plot2) == 15 and set(table2["prompt text"]) != set(table["prompt text"])


def test_upload_preview_and_frame_slider(ctl, tmp_path, ct_path):
    out = ctl.on_upload(ct_path)
    slider, preview, info = out.pop("frame"), out.pop("preview"), out.pop("image_info")
    cleared = list(out.values())
    assert slider["visible"] is False and isinstance(preview, Image.Image) and "DICOM" in info
    assert all(v in (None, "") for v in cleared)

    multi = str(write_dicom(tmp_path / "multi.dcm", frames=5))
    out = ctl.on_upload(multi)
    slider, preview, info = out["frame"], out["preview"], out["image_info"]
    # one numbering, from 1, for the slider and the summary line
    assert slider["visible"] is True and slider["minimum"] == 1 and slider["maximum"] == 5 and slider["value"] == 3
    assert "frame 3 of 5" in info and "modality MR" in info and "body part BRAIN" in info
    out = ctl.on_frame(multi, 5)
    last, info_last = out.pop("preview"), out.pop("image_info")
    assert all(v in (None, "") for v in out.values())
    assert "frame 5 of 5" in info_last and not np.array_equal(np.asarray(last), np.asarray(preview))
    assert "frame 7 does not exist" in error_of(ctl.on_frame, multi, 7)
    out = ctl.on_predict(multi, 4, "btmri", ZERO_SHOT, ctl.preset_table("btmri"), None)
    assert abs(sum(out["label"].values()) - 1) < 1e-4


def test_tiff_16bit_and_rgba_png(ctl, tmp_path, btmri_table):
    tif = tmp_path / "x.tif"
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13)).save(tif)
    rgba = tmp_path / "x.png"
    Image.new("RGBA", (40, 30), (200, 10, 10, 128)).save(rgba)
    for p in (tif, rgba):
        assert abs(sum(predict(ctl, str(p), btmri_table)["label"].values()) - 1) < 1e-4


def test_editing_one_description_reencodes_only_that_sentence(ctl, services, ct_path, btmri_table):
    before = predict(ctl, ct_path, btmri_table)
    cache = services.backbone.text_cache
    n0 = len(cache)
    table = btmri_table.copy()
    sentences = fmt.split_descriptions(table.iloc[0, 1])
    sentences[0] = f"A new hand-written finding number {uuid.uuid4().hex[:8]} in the tumour."
    table.iloc[0, 1] = fmt.SEPARATOR.join(sentences)
    after = predict(ctl, ct_path, table)
    assert len(cache) == n0 + 1  # exactly the edited sentence was encoded
    assert after["label"] == before["label"]  # the learned prompt (the prediction) does not use descriptions
    assert before["sources"]["template ensemble"].tolist() == after["sources"]["template ensemble"].tolist()
    assert any(p.text == sentences[0] for p in after["pred_state"].prompts)  # the new sentence is a prompt now


def test_class_add_remove_rename(ctl, ct_path, btmri_table):
    table = btmri_table.copy()
    table.iloc[3, 0] = "healthy brain"  # rename
    table = table.drop(index=2)  # remove pituitary
    table.loc[len(table) + 5] = ["brain abscess", "a ring-enhancing lesion with central restricted diffusion."]  # add
    table.loc[len(table) + 6] = ["", ""]  # an empty row added in the UI is ignored
    label = predict(ctl, ct_path, table)["label"]
    assert set(label) == {"glioma tumor", "meningioma tumor", "healthy brain", "brain abscess"}


def test_reset_and_preset_change(ctl, btmri_table):
    out = ctl.on_reset("btmri")
    table, gen_class, text = out["table"], out["gen_class"], out["desc_box"]
    pd.testing.assert_frame_equal(table, btmri_table)
    n_sentences = len(load_bank("btmri")["glioma tumor"])  # the shipped bank, one sentence per line
    assert gen_class["value"] == "glioma tumor" and text.count("\n") == n_sentences - 1 and n_sentences >= 25
    out = ctl.on_preset("busi", None, btmri_table, ZERO_SHOT)
    new_table, ckpt, info, gen, text = (out[n] for n in ("table", "checkpoint", "preset_info", "gen_class", "desc_box"))
    assert gen["value"] == "benign tumor" and text.splitlines()[0] in new_table.iloc[0, 1]
    assert list(new_table[fmt.CLASS_COL]) == ["benign tumor", "malignant tumor", "normal scan"]
    assert ckpt["value"] == ZERO_SHOT and any(v == e.id for _, v in ckpt["choices"] for e in entries_for("busi"))
    assert "Breast ultrasound" in info
    custom = ctl.on_preset("custom", None, btmri_table, ZERO_SHOT)["table"]
    assert list(custom[fmt.CLASS_COL]) == list(btmri_table[fmt.CLASS_COL])  # custom starts from the table


def test_one_class_text_editor(ctl, btmri_table):
    text = ctl.on_class_pick(btmri_table, "normal brain")
    assert text.splitlines() == fmt.split_descriptions(btmri_table.iloc[3, 1])
    table = ctl.on_apply(btmri_table, "normal brain", "First new finding.\n\nSecond new finding.\n")
    assert table.iloc[3, 1] == "First new finding. | Second new finding."
    assert table.iloc[0, 1] == btmri_table.iloc[0, 1]
    assert ctl.on_apply(btmri_table, "normal brain", "").iloc[3, 1] == ""  # no descriptions is allowed
    assert "choose a class" in error_of(ctl.on_apply, btmri_table, "zebra", "x")
    assert "longer than" in error_of(ctl.on_apply, btmri_table, "normal brain", "y" * 401)
    picker = ctl.on_table_edit(table.iloc[:2], "normal brain")  # class deleted: the picker moves on
    assert picker["value"] == "glioma tumor" and picker["choices"] == ["glioma tumor", "meningioma tumor"]


def test_generated_descriptions_are_a_proposal_until_applied(ctl, btmri_table):
    proposal = ctl.on_generate("btmri", btmri_table, "glioma tumor", "retrieval", 5, None, None)
    text, note = proposal["desc_box"], proposal["gen_note"]
    assert len(text.splitlines()) == 5 and "not generated" in note and "Proposal" in note
    assert "Apply to the table" in note  # the note names the button that accepts it
    # accepting is the one-class editor's apply: only then the table changes, for that class only
    table = ctl.on_apply(btmri_table, "glioma tumor", text)
    cell = table.loc[table[fmt.CLASS_COL] == "glioma tumor", fmt.DESC_COL].item()
    assert fmt.split_descriptions(cell) == text.splitlines()
    assert table.iloc[1, 1] == btmri_table.iloc[1, 1]
    # a class the bank lacks: the nearest one of the same modality, and the note says so
    table2 = btmri_table.copy()
    table2.loc[9] = ["pituitary adenoma", ""]
    note2 = ctl.on_generate("btmri", table2, "pituitary adenoma", "retrieval", 3, None, None)["gen_note"]
    assert "nearest class: pituitary tumor" in note2
    # nothing similar in the MRI bank: a clear message, never another modality's class
    table2.loc[9] = ["basal cell carcinoma", ""]
    assert "no similar class in the shipped banks" in error_of(
        ctl.on_generate, "btmri", table2, "basal cell carcinoma", "retrieval", 3, None, None)
    assert "choose the class" in error_of(ctl.on_generate, "btmri", btmri_table, None, "retrieval", 3, None, None)


def test_hf_inference_offline_never_leaks_the_token(ctl, btmri_table, caplog):
    token = "hf_TopSecretToken987"
    caplog.set_level(logging.DEBUG)
    message = error_of(ctl.on_generate, "btmri", btmri_table, "glioma tumor", "hf-inference", 3, token, None)
    assert "could not be reached" in message or "token" in message.lower()
    assert token not in message and token not in caplog.text


@pytest.mark.parametrize("method, target, phrase", [
    ("gradcam", PREDICTED, ""),
    ("gradcam", "normal brain", ""),
    ("gradcam", PREDICTED, "a photo of a a."),
    ("rollout", PREDICTED, ""),
])
def test_attention_overlays(ctl, ct_path, btmri_table, method, target, phrase):
    out = ctl.on_explain(ct_path, 0, "btmri", ZERO_SHOT, btmri_table, None, method, target, phrase, 0.5)
    img, caption, expl = out["overlay_img"], out["caption"], out["expl_state"]
    assert isinstance(img, Image.Image) and img.size == (224, 224)
    assert "not lesion localisation" in caption and "visual prompt" in caption
    assert expl.method == method
    if method == "gradcam":
        predicted = predict(ctl, ct_path, btmri_table)["contrib_class"]["value"]  # the class dropdown's update
        assert expl.target == (phrase or (predicted if target == PREDICTED else target))
    faint, strong = ctl.on_alpha(0.0, expl), ctl.on_alpha(1.0, expl)
    assert np.asarray(faint).tolist() != np.asarray(strong).tolist()


def test_explain_unknown_class_is_a_message(ctl, ct_path, btmri_table):
    msg = error_of(ctl.on_explain, ct_path, 0, "btmri", ZERO_SHOT, btmri_table, None, "gradcam", "zebra", "", 0.5)
    assert "unknown class" in msg


def test_concurrent_predict_and_explain_release_hooks(ctl, services, ct_path, btmri_table):
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            if i % 2:
                ctl.on_explain(ct_path, 0, "btmri", ZERO_SHOT, btmri_table, None,
                               "gradcam" if i % 4 == 1 else "rollout", PREDICTED, "", 0.4)
            else:
                predict(ctl, ct_path, btmri_table)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for module in services.backbone.clip.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


# ---------------------------------------------------------------------------- modality check

def test_modality_warning_logic(services):
    backbone = services.backbone
    names, feats = modality.modality_features(backbone)
    ct = feats[names.index("CT")]
    mismatch = modality.check_modality(backbone, ct, "MRI", meaningful=True)
    assert mismatch.mismatch and mismatch.best == "CT" and "like a CT image" in mismatch.message
    mri = modality.check_modality(backbone, feats[names.index("MRI")], "CT", margin=0.0, meaningful=True)
    assert mri.best == "MRI" and "like an MRI image" in mri.message
    same = modality.check_modality(backbone, ct, "CT", meaningful=True)
    assert not same.mismatch and same.message == ""
    assert abs(sum(same.scores.values()) - 1) < 1e-5
    # a margin the best cannot reach: no warning
    assert not modality.check_modality(backbone, ct, "MRI", margin=1.01, meaningful=True).mismatch
    # random weights: not meaningful, never a warning
    rnd = modality.check_modality(backbone, ct, "MRI")
    assert not rnd.meaningful and not rnd.mismatch and "not meaningful" in rnd.message
    custom = modality.check_modality(backbone, ct, None, meaningful=True)
    assert not custom.mismatch and custom.expected is None
    assert modality.header_mismatch("MR", "MRI") is None and "CT image" in modality.header_mismatch("CT", "MRI")
    assert modality.header_mismatch("OT", "MRI") is None  # unknown codes say nothing


def test_modality_warning_reaches_the_ui(ctl, ct_path, btmri_table, monkeypatch):
    import app.services as svc

    def fake_check(backbone, feature, expected, margin=modality.DEFAULT_MARGIN, meaningful=None):
        names, feats = modality.modality_features(backbone)
        return modality.check_modality(backbone, feats[names.index("histopathology")], expected, margin, True)

    monkeypatch.setattr(svc, "check_modality", fake_check)
    with pytest.warns(UserWarning):  # gr.Warning outside a request falls back to warnings.warn
        modality_md = predict(ctl, ct_path, btmri_table)["modality_md"]
    assert "looks more like a histopathology image" in modality_md


# ---------------------------------------------------------------------------- sessions and checkpoints

def _trained_checkpoint(services, folder: Path, classes: list[str]) -> Path:
    model = BiomedDPT(services.backbone, classes, "a photo of a {}.", 4)
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.05)
    return save_checkpoint(folder, model, make_config(model))


def test_session_state_lifecycle_and_trained_checkpoints(ctl, services, ct_path, btmri_table):
    state = new_session_state()
    assert not Path(state["dir"]).exists()  # created lazily
    folder = _trained_checkpoint(services, session_dir(state) / "ckpt", ["cat scan", "dog scan"])
    add_trained(state, "my run", folder)
    choices = checkpoint_choices("btmri", state)
    assert choices[0] == ("Zero-shot (clinical template)", ZERO_SHOT)
    assert ("my run (trained in this session)", "my run") in choices  # the label: no server path on the page
    assert ctl.checkpoint_id("my run", state) == str(folder) == ctl.checkpoint_id(str(folder), state)
    # the checkpoint's classes come into the table when it is chosen
    chosen = ctl.on_checkpoint("my run", "btmri", btmri_table, state)
    table = chosen["table"]
    assert list(table[fmt.CLASS_COL]) == ["cat scan", "dog scan"] and chosen.get("checkpoint", gr.update()) == gr.update()
    label = predict(ctl, ct_path, table, "custom", "my run", state=state)["label"]
    assert set(label) == {"cat scan", "dog scan"}
    # a preset change keeps a trained checkpoint selected, resets anything else
    kept_out = ctl.on_preset("busi", state, table, "my run")
    kept_table, kept = kept_out["table"], kept_out["checkpoint"]
    assert kept["value"] == "my run" and list(kept_table[fmt.CLASS_COL]) == ["cat scan", "dog scan"]
    assert ctl.on_preset("busi", state, table, ZERO_SHOT)["checkpoint"]["value"] == ZERO_SHOT
    cleanup_session_state(state)
    assert not Path(state["dir"]).exists() and state["trained"] == {}
    cleanup_session_state(state)  # idempotent
    assert "hf-hub:" in error_of(predict, ctl, ct_path, table, "custom", "my run", 0, state)


# ---------------------------------------------------------------------------- privacy

def test_dicom_phi_appears_in_no_output_and_no_log(ctl, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = str(write_dicom(tmp_path / "scan.dcm", frames=3))
    table = ctl.preset_table("btmri")
    outputs = [
        ctl.on_upload(path),
        ctl.on_frame(path, 1),
        predict(ctl, path, table, frame=1),
        ctl.on_explain(path, 1, "btmri", ZERO_SHOT, table, None, "gradcam", PREDICTED, "", 0.4)["caption"],
        ctl.api_predict(path, "btmri"),
        ctl.api_explain(path, "btmri")[1],
    ]
    text = json.dumps(outputs, default=str) + caplog.text
    for secret in (SECRET_NAME, "Secretname", SECRET_ID, "Doe"):
        assert secret not in text
    assert "modality MR" in outputs[0]["image_info"]  # the allowlisted fields do show


# ---------------------------------------------------------------------------- API functions in-process

def test_api_functions_in_process(ctl, ct_path):
    label, details = ctl.api_predict(ct_path, "btmri")
    assert abs(sum(label.values()) - 1) < 1e-4 and details["prediction"] == max(label, key=label.get)
    assert set(details["contributions"]["sources"]) == {"learned", "templates", "descriptions"}
    label2, _ = ctl.api_predict(ct_path, "custom", "", '["calcified nodule", "normal lung"]',
                                '{"normal lung": ["clear lung fields."]}', -1)
    assert set(label2) == {"calcified nodule", "normal lung"}
    img, info = ctl.api_explain(ct_path, "btmri", "normal brain", "gradcam", 0.5)
    assert img.size == (224, 224) and info["target"] == "normal brain"
    _, info_phrase = ctl.api_explain(ct_path, "btmri", "a bright round spot")
    assert info_phrase["target"] == "a bright round spot"
    assert "descriptions" in error_of(ctl.api_predict, ct_path, "btmri", None, None, "{not json")


def test_explain_refuses_a_bad_alpha_before_any_model_work(ctl, ct_path, monkeypatch):
    ran = []
    monkeypatch.setattr(type(ctl), "run_explain", lambda self, *a, **k: ran.append(a))
    for alpha in (1e9, -0.1, float("nan")):
        assert "alpha must be between 0 and 1" in error_of(ctl.api_explain, ct_path, "btmri", None, "gradcam", alpha)
    assert ran == []


# ---------------------------------------------------------------------------- launching

def test_main_launches_with_privacy_defaults(monkeypatch):
    import app.main as app_main

    seen: dict = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw, demo=self))
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    app_main.main(["--backbone", "tiny", "--port", "7999", "--log-level", "WARNING"])
    assert seen["server_port"] == 7999 and seen["server_name"] is None  # None: Gradio reads GRADIO_SERVER_NAME
    assert seen["run_history"] is False and seen["share"] is False and seen["show_error"] is False
    demo = seen["demo"]
    assert demo.analytics_enabled is False and demo.delete_cache == app_main.CACHE_LIFETIME
    seen.clear()
    app_main.main(["--backbone", "tiny", "--share", "--host", "0.0.0.0", "--log-level", "WARNING"])
    assert seen["share"] is True and seen["server_name"] == "0.0.0.0" and seen["server_port"] is None


# ---------------------------------------------------------------------------- lazy example caching

def test_shipped_examples_are_recognised_by_content_only(tmp_path):
    import shutil

    from app.examples import EXAMPLES_DIR, ShippedExamples

    shipped = ShippedExamples()
    copy = tmp_path / "upload.bin"  # Gradio hands handlers a renamed copy
    shutil.copy(EXAMPLES_DIR / "ct_small.png", copy)
    assert shipped.match(copy) == "ct_small.png"
    changed = tmp_path / "ct_small.png"  # the name alone is not enough
    data = bytearray(copy.read_bytes())
    data[-20] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert shipped.match(changed) is None
    assert shipped.match(tmp_path / "missing.png") is None and shipped.match(None) is None


def test_example_predictions_are_cached_lazily_uploads_never(tiny, tmp_path):
    import shutil

    from app.device import make_calls
    from app.examples import EXAMPLES_DIR

    model_calls = []

    def counting(fn=None, **_):
        def wrap(f):
            return lambda *a: model_calls.append(f.__name__) or f(*a)
        return wrap if fn is None else wrap(fn)

    services = Services(tiny, calls=make_calls(counting))
    ctl = PredictController(services)
    table = ctl.preset_table("btmri")
    example = tmp_path / "a.png"
    shutil.copy(EXAMPLES_DIR / "ct_small.png", example)
    first = ctl.on_predict(str(example), 0, "btmri", ZERO_SHOT, table, None)
    again = ctl.on_predict(str(example), 0, "btmri", ZERO_SHOT, table, None)
    assert model_calls == ["_predict"]  # computed on first use, then served from memory
    assert again["label"] == first["label"]
    edited = table.copy()
    edited.iloc[0, 1] = "a sentence nobody has encoded before"
    ctl.on_predict(str(example), 0, "btmri", ZERO_SHOT, edited, None)
    ctl.on_predict(str(example), 0, "btmri", ZERO_SHOT, edited, None)
    assert model_calls == ["_predict"] * 3  # what the user typed is theirs: computed, never kept
    upload = tmp_path / "b.png"
    Image.open(example).convert("L").rotate(90).save(upload)
    ctl.on_predict(str(upload), 0, "btmri", ZERO_SHOT, table, None)
    ctl.on_predict(str(upload), 0, "btmri", ZERO_SHOT, table, None)
    assert model_calls == ["_predict"] * 5  # an upload is computed every time, never kept
    api_first = ctl.api_predict(str(example), "btmri")  # the public API shares the cache
    assert ctl.api_predict(str(example), "btmri") == api_first and model_calls == ["_predict"] * 5
    ctl.on_predict(str(example), 0, "kvasir", ZERO_SHOT, ctl.preset_table("kvasir"), None)
    ctl.on_predict(str(example), 0, "kvasir", ZERO_SHOT, ctl.preset_table("kvasir"), None)
    assert model_calls == ["_predict"] * 6  # another preset is another entry


def test_api_explain_matches_class_names_like_the_rest_of_the_app(ctl, ct_path):
    _, info = ctl.api_explain(ct_path, "btmri", "Normal_Brain")  # underscores and case, as in folder names
    assert info["target"] == "normal brain"


def test_handler_dicts_map_onto_the_wired_outputs():
    from app.predict import view

    keyed = view.by_name(lambda: {"caption": "x", "label": {"a": 1.0}}, ["label", "overlay_img", "caption"])
    label, overlay_img, caption = keyed()
    assert label == {"a": 1.0} and caption == "x" and overlay_img == gr.update()  # absent: left as it is
    with pytest.raises(KeyError, match="not wired"):
        view.by_name(lambda: {"sources": None}, ["label"])()
    assert set(view.cleared_results()) == set(view.RESULTS)
