"""The app under ZeroGPU's rules (``app.zerogpu_sim``): every model call in a forked process,
arguments and results by pickle, a time slot per call, errors only as values.

Each test compares with the same work done in-process: the rules must change where the
work runs, never what it computes.
"""
from __future__ import annotations

import time

import pytest
import torch
from conftest import BTMRI, FEWSHOT_UI, class_files, class_image, synthetic_image
from PIL import Image

from app import jobs
from app import zerogpu_sim as sim
from app.device import make_calls
from app.fewshot import handlers as tab
from app.job_channel import FileChannel, MemoryChannel, Status
from app.services import Services
from app.session import cleanup_session_state, new_session_state, session_dir
from dpt_core import fewshot
from dpt_core.checkpoint import read_folder
from dpt_core.describe import GenerationError
from dpt_core.fewshot import TrainSettings
from dpt_core.workflow import setup_from_checkpoint


@pytest.fixture(scope="module")
def local(tiny):
    return Services(tiny)


@pytest.fixture(scope="module")
def zero(tiny):
    return Services(tiny, calls=make_calls(sim.simulated_gpu, slice_s=0.0))  # slice 0: one epoch per call


def _image(label: int = 0, seed: int = 0) -> Image.Image:
    import numpy as np

    return synthetic_image(label, np.random.default_rng(seed), 96)


def _data(n_per_class: int) -> fewshot.LabelledImages:
    images = [class_image(c, 100 * c + i) for c in range(4) for i in range(n_per_class)]
    labels = torch.tensor([c for c in range(4) for _ in range(n_per_class)])
    return fewshot.LabelledImages(images, labels, BTMRI)


# ---------------------------------------------------------------------------- the simulator itself

def _double(x):
    return 2 * x


def _sleep(seconds):
    time.sleep(seconds)
    return "woke"


def _raise():
    raise ValueError("inside")


def _a_lock():
    import threading

    return threading.Lock()


_PARENT_MEMORY = {"touched": False}


def _touch():
    _PARENT_MEMORY["touched"] = True
    return True


def test_simulator_enforces_the_rules():
    assert sim.simulated_gpu(duration=5)(_double)(21) == 42
    with pytest.raises(sim.SimulatedSlotError, match="does not pickle"):
        sim.simulated_gpu(_double)(lambda: 1)  # a callback cannot cross into the worker
    with pytest.raises(sim.SimulatedSlotError, match="ran past its 1 s GPU slot"):
        sim.simulated_gpu(duration=1)(_sleep)(30)
    with pytest.raises(sim.SimulatedSlotError, match="ZeroGPU worker error: _raise raised ValueError"):
        sim.simulated_gpu(_raise)()  # an escaping exception arrives as its class name only
    assert sim.simulated_gpu(_touch)() is True and _PARENT_MEMORY["touched"] is False  # the worker's memory is its own
    with pytest.raises(sim.SimulatedSlotError, match="_a_lock: the result does not pickle"):
        sim.simulated_gpu(_a_lock)()  # the simulator's own finding keeps its message


# ---------------------------------------------------------------------------- Predict tab

def test_predict_and_explain_match_in_process(local, zero):
    setup = local.setup("btmri")
    image = _image(1, 3)
    before = len(sim.CALLS.names())
    a = local.predict(setup, None, image, "MRI")
    b = zero.predict(setup, None, image, "MRI")
    assert b.prediction.prediction == a.prediction.prediction
    assert b.prediction.probs == pytest.approx(a.prediction.probs, abs=1e-6)
    assert b.modality.mismatch == a.modality.mismatch
    ea = local.explain(setup, None, image, "gradcam", "meningioma tumor", None)
    eb = zero.explain(setup, None, image, "gradcam", "meningioma tumor", None)
    assert eb.target == ea.target and abs(eb.heatmap - ea.heatmap).max() < 1e-5
    assert zero.explain(setup, None, image, "rollout").heatmap.shape == ea.heatmap.shape
    assert sim.CALLS.names()[before:] == ["_predict", "_explain", "_explain"]


def test_descriptions_and_user_errors_cross_the_boundary(local, zero, monkeypatch):
    # The server's owner lists a local model that is not there: loading it fails inside the GPU call.
    monkeypatch.setenv("DPT_GENERATION_MODELS", "no/such-local-model-folder")
    setup = local.setup("btmri")
    a = local.generate_descriptions(setup, "glioma tumor", "retrieval", 5)
    b = zero.generate_descriptions(setup, "glioma tumor", "retrieval", 5)
    assert b.sentences == a.sentences and len(b.sentences) == 5
    # raised inside the GPU call, it still reaches the UI as the same error with its message
    before = len(sim.CALLS.names())
    with pytest.raises(GenerationError) as err:
        zero.generate_descriptions(setup, "glioma tumor", "local", 5, model="no/such-local-model-folder")
    assert sim.CALLS.names()[before:] == ["_describe"]  # it was raised inside the GPU call
    with pytest.raises(GenerationError) as same:
        local.generate_descriptions(setup, "glioma tumor", "local", 5, model="no/such-local-model-folder")
    assert str(err.value) == str(same.value)


# ---------------------------------------------------------------------------- Few-shot tab

@pytest.mark.slow
def test_training_in_gpu_slots_equals_training_in_process(local, zero, tmp_path):
    setup = local.setup("btmri")
    data = _data(4)  # 3 training + 1 held-out image per class
    settings = TrainSettings.from_setup(setup, epochs=4, views=2)
    a = jobs.run_fewshot(local.backbone, setup, data, settings, tmp_path / "a")
    before = len(sim.CALLS.names())
    channel = FileChannel(tmp_path / "channel")
    b = zero.run_fewshot(setup, data, settings, tmp_path / "b", "", channel)
    assert sim.CALLS.names()[before:] == ["_prepare"] + ["_train"] * 4 + ["_finish"]  # one epoch per slot
    assert b.timings["training_calls"] == 4 and not b.stopped
    assert b.history == a.history
    ta, tb = read_folder(a.folder).tensors, read_folder(b.folder).tensors
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert b.check.adapted.accuracy == a.check.adapted.accuracy
    last = channel.status()
    assert last is not None and last.phase == "saving"  # written by the worker, read here
    # the new checkpoint, loaded in the server, crosses into a GPU call for prediction
    image = _image(2, 9)
    pa = local.predict(setup_from_checkpoint(read_folder(a.folder)), str(a.folder), image, "MRI").prediction
    pb = zero.predict(setup_from_checkpoint(read_folder(b.folder)), str(b.folder), image, "MRI").prediction
    assert pb.probs == pytest.approx(pa.probs, abs=1e-6)


@pytest.mark.slow
def test_stop_reaches_a_training_in_another_process(zero, tmp_path):
    setup = zero.setup("btmri")
    data = _data(2)
    channel = FileChannel(tmp_path / "channel")

    class StopAfterTwoSlots:
        """Wraps the phases: the user presses Stop while the third training call is pending."""

        def __init__(self, phases):
            self.phases, self.calls = phases, 0

        def train(self, *args):
            self.calls += 1
            if self.calls == 3:
                channel.request_stop()
            return self.phases.train(*args)

    phases = zero.calls.fewshot_phases(zero.ref)
    wrapper = StopAfterTwoSlots(phases)
    r = jobs.run_fewshot(fewshot.Phases(phases.prepare, wrapper.train, phases.finish), setup, data,
                         TrainSettings.from_setup(setup, epochs=20, views=1), tmp_path / "ck", "", channel, 0.0)
    assert r.stopped and r.epochs_completed == 2
    assert read_folder(r.folder).config["training"]["stopped_early"] is True


@pytest.mark.slow
def test_the_train_button_under_zerogpu_rules(zero, tmp_path):
    """The tab's own handler: validation, queue, job thread, status stream, result - with GPU slots."""
    state = new_session_state()
    try:
        files = class_files(tmp_path, 4)
        # 30 epochs: the CPU default's batch holds all 12 training images, so an epoch is one step,
        # and the training must last past a status poll (POLL_S) for progress to be seen
        state, pending, _ = tab.prepare(state, zero, "btmri", "\n".join(BTMRI), True, "synthetic", 30, 1, 0.0025,
                                        0.0, 0.0, "mean", "reference", 1, files + [None] * (tab.N_CARDS - 4), "z")
        outputs = list(tab.train_stream(zero, state, pending, FEWSHOT_UI, "z"))
        final = outputs[-1]
        assert final["status"] == "**Done.**"
        assert read_folder(final["last"]["folder"]).class_names == BTMRI
        assert any("Training: epoch" in str(o.get("status", "")) for o in outputs)  # progress from the worker
        assert not any((session_dir(state) / "jobs").iterdir())  # the job's channel folder is gone
    finally:
        cleanup_session_state(state)


def test_channels_carry_status_and_stop(tmp_path):
    throttled = FileChannel(tmp_path / "c", min_interval_s=3600)
    for channel, last_step in ((MemoryChannel(), "step 2"), (throttled, "step 1")):
        assert channel.status() is None and not channel.stop_requested()
        channel.report(Status("encoding", "Encoding 4 images..."))
        channel.report(Status("training", "step 1", 0.1, [{"epoch": 1, "total": 1.0}]))
        channel.report(Status("training", "step 2", 0.2))  # the file channel skips steps within its interval
        seen = channel.status()
        assert seen.phase == "training" and seen.text == last_step
        if last_step == "step 1":
            assert seen.epochs == [{"epoch": 1, "total": 1.0}]  # read back from the file as written
        channel.report(Status("saving", "Saving..."))  # a new phase is always written
        assert channel.status().phase == "saving"
        channel.request_stop()
        assert channel.stop_requested()
    gone = FileChannel(tmp_path / "gone")
    import shutil

    shutil.rmtree(gone.folder)
    assert gone.stop_requested()  # the session folder went away: nobody waits for the result


def test_preparation_slot_grows_with_the_work():
    from app.device import prepare_duration

    setup = None
    small = prepare_duration(None, setup, _data(2), TrainSettings(views=4), None)
    large = prepare_duration(None, setup, _data(8), TrainSettings(views=4), None)
    assert 30 < small < large
    # the most the tab allows: 8 classes x 32 images, 16 views
    assert prepare_duration(None, setup, [None] * 256, TrainSettings(views=16), None) == pytest.approx(132.4)


@pytest.mark.slow
def test_no_model_work_runs_in_the_server_process(tmp_path):
    """On ZeroGPU the server process has no GPU: every forward must happen inside a GPU call."""
    import os

    from app.choices import ZERO_SHOT
    from app.predict.handlers import PredictController
    from dpt_core.backbone import load_backbone

    server = os.getpid()
    backbone = load_backbone("tiny", "cpu")

    def refuse_in_server(module, args):
        if os.getpid() == server:
            raise AssertionError(f"{type(module).__name__} ran in the server process")

    # the tiny backbone is one shared object (the fixture's too): the hooks go when the test ends
    hooks = [m.register_forward_pre_hook(refuse_in_server) for m in backbone.clip.modules()]
    try:
        services = Services(backbone, calls=make_calls(sim.simulated_gpu))
        setup = services.setup("btmri")
        image = _image(0, 1)
        assert services.predict(setup, None, image, "MRI").prediction.prediction in BTMRI
        for method in ("gradcam", "rollout"):
            assert services.explain(setup, None, image, method).heatmap.shape[0] > 0
        assert services.explain(setup, None, image, "gradcam", phrase="a bright mass").target == "a bright mass"
        assert services.generate_descriptions(setup, "glioma tumor", "retrieval", 3).sentences
        ctl = PredictController(services)  # the Predict tab's own handler, on an upload
        upload = tmp_path / "scan.png"
        image.save(upload)
        probs = ctl.on_predict(str(upload), 0, "btmri", ZERO_SHOT, ctl.preset_table("btmri"), None)["label"]
        assert sorted(probs) == sorted(BTMRI)
        r = services.run_fewshot(setup, _data(4), TrainSettings.from_setup(setup, epochs=2, views=2),
                                 tmp_path / "ck", "", FileChannel(tmp_path / "ch"))
        assert r.epochs_completed == 2 and r.check is not None
        with pytest.raises(AssertionError, match="ran in the server process"):  # the guard itself works
            services.predict_here(setup, None, None, image, "MRI")
    finally:
        for hook in hooks:
            hook.remove()
