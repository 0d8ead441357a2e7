"""Few-shot tab: upload and zip validation, training job (progress, stop, one at a time), result, export.

Offline, tiny backbone. Handlers are called as plain functions: ``train_stream`` yields
dicts keyed by whatever ``ui`` holds, so a namespace of strings stands in for components.
"""
from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import BTMRI, class_files, class_image, synthetic_image
from conftest import FEWSHOT_UI as UI
from PIL import Image

from app import export, jobs, uploads, zip_import
from app.fewshot import handlers as tab
from app.fewshot import layout, view
from app.job_channel import MemoryChannel
from app.services import CUSTOM, Services
from app.session import new_session_state, session_dir, trained_checkpoints
from app.uploads import Limits
from dpt_core import errors, fewshot
from dpt_core.checkpoint import TENSOR_KEYS, read_folder
from dpt_core.errors import FewShotError
from dpt_core.features import encode_images
from dpt_core.fewshot import TrainSettings
from dpt_core.predictor import Predictor
from dpt_core.recipes import recipe_of
from dpt_core.workflow import setup_classes, setup_from_checkpoint, zero_shot_model

FAST = {"epochs": 3, "views": 1}  # enough to exercise every step on tiny in a few seconds


# ---------------------------------------------------------------------------- helpers

def _png_bytes(label: int, seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    synthetic_image(label % 3, np.random.default_rng(seed), 48).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def services():
    from dpt_core.backbone import load_backbone

    return Services(load_backbone("tiny", "cpu"))


@pytest.fixture
def state():
    s = new_session_state()
    yield s
    from app.session import cleanup_session_state

    cleanup_session_state(s)


def _prepare(services, state, files, *, classes=BTMRI, preset="btmri", consent=True, description="",
             key="session-a", **settings):
    s = TrainSettings.from_setup(services.setup(preset, classes), **{**FAST, **settings})
    return tab.prepare(state, services, preset, "\n".join(classes), consent, description, s.epochs, s.views, s.lr,
                       s.l1, s.kl, s.teacher, s.layout, s.seed, files=files, session_key=key)


def _run(services, state, pending, key="session-a", on_yield=None) -> tuple[dict, list[dict]]:
    """Drive the Train generator to the end; returns (merged outputs, every yield)."""
    merged, seen = {}, []
    for out in tab.train_stream(services, state, pending, UI, key):
        seen.append(out)
        merged.update(out)
        if on_yield is not None:
            on_yield(out)
    return merged, seen


def _handles():
    from app.choices import checkpoint_update

    return SimpleNamespace(checkpoint_update=checkpoint_update)


# ---------------------------------------------------------------------------- class list and uploads

def test_class_names_parse_and_limit():
    assert uploads.parse_class_names("a\nb\n\n c ") == ["a", "b", "c"]
    assert uploads.parse_class_names("a, b") == ["a", "b"]
    with pytest.raises(FewShotError, match="at most 8 classes"):
        uploads.parse_class_names("\n".join(f"class {i}" for i in range(9)))
    with pytest.raises(FewShotError, match="duplicate"):
        uploads.parse_class_names("Glioma\nglioma")


def test_cards_follow_the_class_list():
    out = tab.on_classes("a\nb\nc")
    cards, headers, msg = out[:8], out[8:16], out[16]
    assert [c["visible"] for c in cards] == [True] * 3 + [False] * 5
    assert "c" in headers[2]["value"] and msg["value"] == ""
    out = tab.on_classes("\n".join(f"k{i}" for i in range(9)))
    assert all(c["visible"] for c in out[:8]) and "at most 8" in out[16]["value"]


def test_user_text_is_escaped_in_markdown_and_errors():
    out = tab.on_classes("<img src=x onerror=alert(1)>\nok")
    assert "<img" not in out[8]["value"] and "&lt;img" in out[8]["value"]
    err = tab._error("bad <b>name</b>\nsecond line")
    assert "&lt;b&gt;" in str(err) and "<br>" in str(err)


def test_preset_fills_classes_and_loss_weights():
    classes, l1, kl = tab.on_preset("kvasir")
    assert len(classes["value"].splitlines()) == 8 and l1["value"] == 25.0 and kl["value"] == 0.75
    assert tab.on_preset(CUSTOM)[0]["value"] == ""


def test_missing_class_images(tmp_path):
    files = class_files(tmp_path, 2, 3) + [[]]
    with pytest.raises(FewShotError, match="at least one image.*normal brain"):
        uploads.load_class_images(BTMRI, files)


def test_too_many_images_per_class(tmp_path):
    files = class_files(tmp_path, 1, 4)
    files[1] = files[1] * 33
    with pytest.raises(FewShotError, match="At most 32 images per class.*meningioma tumor \\(33\\)"):
        uploads.load_class_images(BTMRI, files)


def test_total_upload_size(tmp_path):
    files = class_files(tmp_path, 2, 4)
    with pytest.raises(FewShotError, match="add up to .*the limit is"):
        uploads.load_class_images(BTMRI, files, Limits(max_total_bytes=1000))


def test_non_image_renamed_png_is_refused(tmp_path):
    files = class_files(tmp_path, 2, 4)
    fake = tmp_path / "report.png"
    fake.write_text("patient notes, not pixels")
    files[2].append(str(fake))
    with pytest.raises(FewShotError, match="pituitary tumor: Could not read 'report.png'"):
        uploads.load_class_images(BTMRI, files)
    summary = uploads.summarize_card(files[2])  # the card says so too, before training
    assert summary.n_images == 2 and "1 unreadable" in summary.text()


def test_decodes_dicom_and_counts_thumbnails(tmp_path):
    examples = Path(__file__).resolve().parent.parent / "assets" / "examples"
    summary = uploads.summarize_card([str(examples / "ct_small.dcm"), str(examples / "ct_small.png")])
    assert summary.n_images == 2 and not summary.problems
    assert max(summary.thumbnails[0][0].size) <= 96 and summary.text() == "2 images"


def test_consent_unchecked(services, state, tmp_path):
    with pytest.raises(FewShotError, match="de-identified"):
        uploads.check_consent(False)
    with pytest.raises(gr.Error, match="de-identified"):
        _prepare(services, state, class_files(tmp_path, 1), consent=False)


def test_defaults_follow_the_device(services):
    setup = services.setup("btmri")
    cpu, gpu = TrainSettings.from_setup(setup), TrainSettings.from_setup(setup, gpu=True)
    assert recipe_of(cpu.train_config()) == "cpu-fewshot"  # the library's defaults (dpt_core.recipes)
    assert recipe_of(gpu.train_config()) == "gpu-fewshot"
    assert (gpu.epochs, gpu.batch_size) == (100, 4) and fewshot.default_batch(True) == 4  # the paper's on a GPU
    assert cpu.batch_size == fewshot.default_batch(False) and (cpu.l1, cpu.kl) == (12.5, 0.25)
    assert not tab._uses_gpu(services)  # tiny on CPU, loaded
    lazy = Services("tiny", device="cpu")
    assert not layout._uses_gpu(lazy) and not lazy.loaded  # decided without loading the backbone


def test_bad_settings_are_explained():
    with pytest.raises(FewShotError, match="epochs must be between 1 and 200.*loss weights"):
        TrainSettings(epochs=0, l1=-1).checked()
    with pytest.raises(FewShotError, match="teacher"):
        TrainSettings(teacher="oracle").checked()


# ---------------------------------------------------------------------------- zip import

def test_zip_sorts_folders_into_classes(tmp_path):
    members = {f"export/Glioma_Tumor/{i}.png": _png_bytes(0, i) for i in range(3)}
    members |= {f"export/normal_brain/{i}.png": _png_bytes(1, i) for i in range(2)}
    members |= {"export/cats/0.png": _png_bytes(2, 0), "export/README.txt": b"hello", "__MACOSX/x": b"",
                "export/normal_brain/.DS_Store": b"junk"}
    result = zip_import.import_zip(_zip(tmp_path / "d.zip", members), BTMRI, tmp_path / "out")
    assert [len(f) for f in result.files] == [3, 0, 0, 2]
    assert result.unknown_folders == ["cats"]
    report = result.report()
    assert "cats" in report and "No folder for: meningioma tumor, pituitary tumor" in report
    assert all(p.is_file() and p.is_relative_to(tmp_path / "out") for f in result.files for p in f)


def test_zip_folders_become_custom_classes(tmp_path):
    members = {f"{c}/{i}.png": _png_bytes(k, i) for k, c in enumerate(["benign", "malignant_tumour"]) for i in range(2)}
    result = zip_import.import_zip(_zip(tmp_path / "d.zip", members), None, tmp_path / "out")
    assert result.class_names == ["benign", "malignant tumour"] and [len(f) for f in result.files] == [2, 2]


def test_zip_with_unknown_folders_only(tmp_path):
    z = _zip(tmp_path / "d.zip", {"cats/0.png": _png_bytes(0, 0), "dogs/0.png": _png_bytes(1, 0)})
    with pytest.raises(FewShotError, match="No folder in the zip matches a class.*cats, dogs"):
        zip_import.import_zip(z, BTMRI, tmp_path / "out")


@pytest.mark.parametrize("name", ["../evil.png", "glioma_tumor/../../evil.png", "/etc/evil.png",
                                  "C:/evil.png", "..\\evil.png"])
def test_zip_path_traversal_is_refused(tmp_path, name):
    z = _zip(tmp_path / "d.zip", {"glioma_tumor/ok.png": _png_bytes(0, 0), name: _png_bytes(0, 1)})
    with pytest.raises(FewShotError, match="outside its own folder"):
        zip_import.import_zip(z, BTMRI, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()


def test_zip_bomb_is_refused_before_extraction(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open("glioma_tumor/big.png", "w") as fh:  # 40 MB of zeros, ~40 KB on disk
        for _ in range(40):
            fh.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    with pytest.raises(FewShotError, match="zip bomb"):
        zip_import.import_zip(path, BTMRI, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_total_size_and_member_count(tmp_path):
    members = {f"glioma_tumor/{i}.png": _png_bytes(0, i) for i in range(4)}
    z = _zip(tmp_path / "d.zip", members)
    with pytest.raises(FewShotError, match="unpacks to .*the limit is"):
        zip_import.import_zip(z, BTMRI, tmp_path / "out", Limits(max_total_bytes=2000))
    with pytest.raises(FewShotError, match="4 entries; the limit is 3"):
        zip_import.import_zip(z, BTMRI, tmp_path / "out", Limits(max_zip_members=3))
    with pytest.raises(FewShotError, match="At most 2 images per class"):
        zip_import.import_zip(z, BTMRI, tmp_path / "out", Limits(max_per_class=2))


def test_zip_member_that_is_not_an_image(tmp_path):
    z = _zip(tmp_path / "d.zip", {"glioma_tumor/a.png": _png_bytes(0, 0), "glioma_tumor/b.png": b"%PDF-1.4 nope"})
    with pytest.raises(FewShotError, match="'glioma_tumor/b.png' in the zip is not an image"):
        zip_import.import_zip(z, BTMRI, tmp_path / "out")


def test_zip_symlink_and_garbage(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("glioma_tumor/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(FewShotError, match="symbolic links"):
        zip_import.import_zip(path, BTMRI, tmp_path / "out")
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(FewShotError, match="not a zip file"):
        zip_import.import_zip(junk, BTMRI, tmp_path / "out")


def test_zip_handler_fills_the_cards(state, tmp_path):
    members = {f"{c.replace(' ', '_')}/{i}.png": _png_bytes(k, i) for k, c in enumerate(BTMRI) for i in range(2)}
    out = tab.on_zip(state, str(_zip(tmp_path / "d.zip", members)), "btmri", "\n".join(BTMRI))
    files = out[2:2 + tab.N_CARDS]
    assert [len(f or []) for f in files] == [2, 2, 2, 2, 0, 0, 0, 0]
    assert all(Path(p).is_relative_to(session_dir(state)) for f in files[:4] for p in f)
    with pytest.raises(gr.Error, match="outside its own folder"):
        tab.on_zip(state, str(_zip(tmp_path / "e.zip", {"../x.png": b"x"})), "btmri", "\n".join(BTMRI))


# ---------------------------------------------------------------------------- training, result, use

@pytest.mark.slow
def test_train_use_predict_round_trip(services, state, tmp_path):
    files = class_files(tmp_path, 8)
    state, pending, status = _prepare(services, state, files, description="synthetic textures, test only")
    assert status == "Starting..." and len(pending.data) == 32
    merged, seen = _run(services, state, pending)
    assert seen[0]["pending"] is None  # the validated images leave the State at once
    assert merged["status"] == "**Done.**"
    last = merged["last"]
    folder = Path(last["folder"])
    assert folder.is_relative_to(session_dir(state)) and merged["result"]["visible"]
    assert "Held-out check** on 8 images" in merged["summary"] and "random weights" in merged["summary"]
    assert "**Calibration** on the 8 held-out images: expected calibration error" in merged["summary"]
    assert json.loads((Path(merged["last"]["folder"]) / "config.json").read_text())["calibration"]["n_calibration"] == 8
    assert list(merged["per_class"]["held-out images"]) == [2, 2, 2, 2]
    assert list(merged["confusion"].columns) == ["true \\ predicted", *BTMRI]
    assert int(merged["confusion"].iloc[:, 1:].to_numpy().sum()) == 8
    assert sorted(set(merged["plot"]["part"])) == ["ce", "kl", "l1", "total"] and merged["plot"]["epoch"].max() == 3

    state, preset_update, ckpt_update, tabs = tab.use_in_predict(state, last, _handles())
    assert tabs.selected == "predict" and preset_update["value"] == "btmri"
    values = [v for _, v in ckpt_update["choices"]]
    assert ckpt_update["value"] in values and str(folder) not in values  # a label, never a server path
    assert trained_checkpoints(state)[ckpt_update["value"]] == str(folder)

    ckpt = services.load_checkpoint(str(folder), "btmri")  # what the Predict tab does with the value
    predictor = services.predictor(setup_from_checkpoint(ckpt), str(folder))
    pred = predictor.predict([Image.open(files[0][0]).convert("RGB")])[0]
    assert pred.prediction in BTMRI and abs(sum(pred.probs.values()) - 1) < 1e-5
    assert ckpt.config["metrics"]["heldout_images"] == 8 and ckpt.config["data_description"].startswith("synthetic")


@pytest.mark.slow
def test_features_are_encoded_once_and_reused(services, tmp_path, monkeypatch):
    calls = []
    from dpt_core import fewshot  # the run lives in the library

    real = fewshot.encode_images
    monkeypatch.setattr(fewshot, "encode_images", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    from dpt_core import train as train_mod
    from dpt_core import workflow

    monkeypatch.setattr(workflow, "encode_images", lambda *a, **k: pytest.fail("prepare_training re-encoded"))
    views = []
    real_train = train_mod.encode_images
    monkeypatch.setattr(train_mod, "encode_images", lambda *a, **k: views.append(len(a[1])) or real_train(*a, **k))
    setup = services.setup("btmri")
    data = uploads.load_class_images(BTMRI, class_files(tmp_path, 4))
    r = jobs.run_fewshot(services.backbone, setup, data, TrainSettings.from_setup(setup, epochs=3, views=2),
                         tmp_path / "ck")
    assert calls == [16] and r.n_train == 12 and r.check.n_images == 4
    assert views == [12]  # one augmented view of the training images; the centre view reuses the features


@pytest.mark.slow
def test_too_few_images_for_a_held_out_check(services, tmp_path):
    setup = services.setup("btmri")
    data = uploads.load_class_images(BTMRI, class_files(tmp_path, 3))
    r = jobs.run_fewshot(services.backbone, setup, data, TrainSettings.from_setup(setup, **FAST), tmp_path / "ck")
    assert r.check is None and r.n_train == 12
    text = view.summary_markdown(r)
    assert "No held-out check" in text and "at least 4 images" in text and "%" not in text
    assert view.per_class_frame(r).empty and view.confusion_frame(r).empty
    metrics = read_folder(r.folder).config["metrics"]
    assert "heldout_accuracy" not in metrics and "No held-out check" in metrics["heldout_check"]


@pytest.mark.slow
def test_stop_mid_training_keeps_a_usable_checkpoint(services, tmp_path):
    setup = services.setup("btmri")
    data = uploads.load_class_images(BTMRI, class_files(tmp_path, 4))

    class StopAfterTwoEpochs(MemoryChannel):
        def report(self, status: fewshot.Status) -> None:
            super().report(status)
            if len(status.epochs) >= 2:  # from the on_step callback, after two complete epochs
                self.request_stop()

    r = jobs.run_fewshot(services.backbone, setup, data, TrainSettings.from_setup(setup, epochs=50, views=1),
                         tmp_path / "ck", channel=StopAfterTwoEpochs())
    assert r.stopped and 2 <= r.epochs_completed < 50
    ckpt = read_folder(r.folder)
    assert ckpt.config["training"]["stopped_early"] is True
    assert "stopped early" in ckpt.config["metrics"]["caveat"]
    pred = Predictor(services.backbone, BTMRI, setup.templates, setup.descriptions, checkpoint=ckpt)
    assert pred.predict([data.images[0]])[0].prediction in BTMRI
    assert "Stopped early" in view.summary_markdown(r)


@pytest.mark.slow
def test_stop_button_ends_the_session_job(services, state, tmp_path):
    state, pending, _ = _prepare(services, state, class_files(tmp_path, 4), epochs=200, key="stopper")
    answers = []

    def on_yield(out):
        if "Training: epoch" in str(out.get("status", "")) and not answers:
            answers.append(tab.stop("stopper"))
            assert tab.stop("someone-else") == "Nothing is training in this session."

    t0 = time.perf_counter()
    merged, _ = _run(services, state, pending, key="stopper", on_yield=on_yield)
    assert answers and answers[0].startswith("**Stopping**")
    assert "Stopped early" in merged["status"] and merged["last"]["folder"]
    assert time.perf_counter() - t0 < 120
    assert not jobs.RUNNER.busy("stopper")
    assert tab.stop("stopper") == "Nothing is training in this session."


def test_stop_before_training_saves_nothing(services, tmp_path):
    setup = services.setup("btmri")
    data = uploads.load_class_images(BTMRI, class_files(tmp_path, 1))
    stopped = MemoryChannel()
    stopped.request_stop()
    with pytest.raises(errors.TrainingStopped):
        jobs.run_fewshot(services.backbone, setup, data, TrainSettings.from_setup(setup, **FAST), tmp_path / "ck",
                         channel=stopped)
    assert not (tmp_path / "ck").exists()


def test_one_training_at_a_time_reports_waiting():
    runner = jobs.JobRunner()  # its own single worker, so a slow test elsewhere cannot block this one
    release = threading.Event()
    first = runner.submit("a", lambda channel: release.wait(10) and "first")
    second = runner.submit("b", lambda channel: "second")
    deadline = time.time() + 5
    while "Waiting" not in second.status.text and time.time() < deadline:
        time.sleep(0.02)
    assert "Waiting for another training to finish" in second.status.text and not second.wait(0.2)
    assert (first.state, second.state) == ("running", "queued")
    release.set()
    assert first.wait(5) and second.wait(5) and (first.result, second.result) == ("first", "second")
    third_blocker = runner.submit("c", lambda channel: time.sleep(0.5))
    waiting = runner.submit("d", lambda channel: "never")
    time.sleep(0.1)
    waiting.stop()  # Stop while queued behind another training
    assert waiting.wait(5) and isinstance(waiting.error, errors.TrainingStopped)
    assert third_blocker.wait(5)


def test_prepare_says_when_it_will_wait(services, state, tmp_path):
    release = threading.Event()
    blocker = jobs.RUNNER.submit("other-user", lambda channel: release.wait(10))
    try:
        _, _, status = _prepare(services, state, class_files(tmp_path, 1), key="waiter")
    finally:
        release.set()
        assert blocker.wait(5)
        jobs.RUNNER.remove("other-user", blocker)
    assert "waiting for another training to finish" in status
    jobs.RUNNER.claim("waiter")


def test_stop_while_queued_cancels_before_start(services, state, tmp_path):
    state, pending, _ = _prepare(services, state, class_files(tmp_path, 1), key="queued")
    assert tab.stop("queued").startswith("**Cancelled**")
    merged, seen = _run(services, state, pending, key="queued")
    assert len(seen) == 1 and "before it started" in merged["status"] and merged["pending"] is None
    assert "last" not in merged and not (session_dir(state) / "fewshot").exists()


def test_train_event_is_one_at_a_time_in_the_runner(tiny):
    from app.main import build_demo

    demo = build_demo(Services(tiny))
    # Gradio does not hold the Train event back: the runner's single worker does, so a second
    # user's status stream says it is queued and its Stop reaches it.
    assert jobs.RUNNER._executor._max_workers == 1
    train = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "_train"]
    assert len(train) == 1 and train[0].concurrency_limit is None
    stop = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "_stop"]
    assert stop and stop[0].concurrency_limit is None  # Stop is never queued behind a training


@pytest.mark.slow
def test_two_sessions_train_and_predict_apart(services, tmp_path):
    a, b = new_session_state(), new_session_state()
    try:
        results, statuses = {}, {"a": [], "b": []}

        def run(key, st, files):
            # long enough to overlap: 180 steps (the default batch holds all 12 training images: one step an epoch)
            st, pending, _ = _prepare(services, st, files, key=key, epochs=180)
            merged, seen = _run(services, st, pending, key=key)
            statuses[key] = [str(o.get("status", "")) for o in seen]
            results[key] = (st, merged["last"])

        threads = [threading.Thread(target=run, args=("a", a, class_files(tmp_path / "a", 4))),
                   threading.Thread(target=run, args=("b", b, class_files(tmp_path / "b", 4)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert set(results) == {"a", "b"}
        assert any("Waiting for another training" in s for s in statuses["a"] + statuses["b"])
        # Each session sees its own checkpoint only, in its state and in its Predict dropdown.
        (a, last_a), (b, last_b) = results["a"], results["b"]
        a, _, choices_a, _ = tab.use_in_predict(a, last_a, _handles())
        b, _, choices_b, _ = tab.use_in_predict(b, last_b, _handles())
        assert a["dir"] != b["dir"] and not set(a["trained"].values()) & set(b["trained"].values())
        assert Path(last_a["folder"]).is_relative_to(a["dir"]) and Path(last_b["folder"]).is_relative_to(b["dir"])
        assert trained_checkpoints(a)[choices_a["value"]] == last_a["folder"]  # values are labels mapped per session
        assert trained_checkpoints(b)[choices_b["value"]] == last_b["folder"]
        assert last_a["folder"] not in trained_checkpoints(b).values()
        assert last_a["folder"] not in [v for _, v in choices_a["choices"]]  # no server path on the page
        # While B trains again, A keeps predicting with its own checkpoint.
        ckpt = services.load_checkpoint(last_a["folder"], "btmri")
        pred = services.predictor(setup_from_checkpoint(ckpt), last_a["folder"])
        assert pred.predict([Image.new("RGB", (64, 64), (90, 20, 20))])[0].prediction in BTMRI
    finally:
        from app.session import cleanup_session_state

        cleanup_session_state(a)
        cleanup_session_state(b)


# ---------------------------------------------------------------------------- export and privacy

@pytest.fixture(scope="module")
def trained(services, tmp_path_factory):
    """One small checkpoint (ranked teacher: the most tensors a checkpoint can hold) and its data."""
    tmp = tmp_path_factory.mktemp("trained")
    setup = services.setup("btmri")
    data = uploads.load_class_images(BTMRI, class_files(tmp, 4))
    r = jobs.run_fewshot(services.backbone, setup, data, TrainSettings.from_setup(setup, teacher="ranked", **FAST),
                         export.new_checkpoint_dir(tmp, "btmri"), data_description="16 synthetic PNGs")
    return r, data


@pytest.mark.slow
def test_checkpoint_zip_contents(trained, tmp_path):
    r, _ = trained
    archive = export.zip_checkpoint(r.folder, tmp_path / "ck.zip")
    with zipfile.ZipFile(archive) as zf:
        names = sorted(zf.namelist())
        card = zf.read(f"{r.folder.name}/README.md").decode()
        config = json.loads(zf.read(f"{r.folder.name}/config.json"))
    assert names == [f"{r.folder.name}/{n}" for n in ("README.md", "config.json", "prompts.safetensors")]
    assert "heldout_accuracy" in card and "zero_shot_heldout_accuracy" in card and "not a clinical" in card
    assert "16 synthetic PNGs" in card and "must not be used for diagnosis" in card
    assert config["metrics"]["heldout_images"] == r.check.n_images
    assert config["teacher"]["mode"] == "ranked"


@pytest.mark.slow
def test_checkpoint_holds_prompt_tensors_only(services, trained):
    r, data = trained
    shapes = export.tensor_names(r.folder)
    assert set(shapes) <= set(TENSOR_KEYS) and "text_ctx" in shapes
    assert set(shapes) == {"text_ctx", "teacher.features", "combine.query", "combine.score_gain"}
    n_ctx, width = shapes["text_ctx"]
    assert (n_ctx, width) == (5, services.backbone.text_width) and shapes["teacher.features"][0] == 4
    # No saved row is (close to) the embedding of any training image.
    feats = encode_images(zero_shot_model(services.backbone, setup_classes("btmri")), data.images)
    for name, t in read_folder(r.folder).tensors.items():
        rows = t.reshape(-1, t.shape[-1]) if t.ndim else t.reshape(1, 1)
        if rows.shape[-1] == feats.shape[-1]:
            cos = torch.nn.functional.normalize(rows.float(), dim=-1) @ feats.t()
            assert float(cos.max()) < 0.99, name


@pytest.mark.slow
def test_description_edited_after_training_reaches_card_and_zip(trained, tmp_path):
    r, _ = trained
    archive = export.zip_checkpoint(r.folder, tmp_path / "ck.zip")
    last = {"folder": str(r.folder), "zip": str(archive)}
    update = tab.on_description(last, "Edited: 16 synthetic images, no patients.")
    assert update["value"] == str(archive)
    with zipfile.ZipFile(archive) as zf:
        assert "Edited: 16 synthetic images" in zf.read(f"{r.folder.name}/README.md").decode()
    assert tab.on_description(None, "x") == gr.update()
    before = (r.folder / "config.json").read_text()
    with pytest.raises(gr.Error, match="limited to 2,000 characters"):  # a 2 MB text is refused, nothing rewritten
        tab.on_description(last, "x" * 2_000_001)
    assert (r.folder / "config.json").read_text() == before


@pytest.mark.slow
def test_push_uses_the_token_and_is_private_by_default(trained, monkeypatch):
    r, _ = trained
    last = {"folder": str(r.folder)}
    calls = []
    monkeypatch.setattr(export, "push_folder", lambda folder, repo, token, private: calls.append(
        (folder, repo, token, private)) or f"https://huggingface.co/{repo}")
    assert "private" in tab.push(last, "me/dpt-test", "hf_typed", True)
    oauth = gr.OAuthToken(token="hf_oauth", scope="write-repos", expires_at=0)
    tab.push(last, "me/dpt-test", "", False, oauth)
    assert calls == [(str(r.folder), "me/dpt-test", "hf_typed", True), (str(r.folder), "me/dpt-test", "hf_oauth", False)]
    with pytest.raises(gr.Error, match="token"):
        tab.push(last, "me/dpt-test", "", True, None)
    with pytest.raises(gr.Error, match="ORG/NAME"):
        tab.push(last, "no-slash", "hf_x", True)

    from dpt_core.hub import HubError

    def offline(*a, **k):
        raise HubError("push to me/dpt-test: the Hub is not reachable in offline mode (HF_HUB_OFFLINE is set)")

    monkeypatch.setattr(export, "push_folder", offline)
    with pytest.raises(gr.Error, match="Push failed: .*offline"):
        tab.push(last, "me/dpt-test", "hf_x", True)


def test_use_in_predict_needs_a_result(state):
    with pytest.raises(gr.Error, match="Train a checkpoint first"):
        tab.use_in_predict(state, None, _handles())


def test_large_uploads_are_reduced_for_training_small_ones_kept(tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2000), dtype=np.uint8)).save(big)
    small = tmp_path / "small.png"
    class_image(0, 1).save(small)
    data = uploads.load_class_images(["a", "b"], [[str(big)], [str(small)]])
    assert data.images[0].size == (1000, 800)  # short side 800, aspect kept
    assert data.images[1].size == Image.open(small).size
