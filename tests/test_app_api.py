"""The public API through gradio_client: /predict and /explain on a launched demo (loopback only, tiny backbone)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(scope="module", autouse=True)
def loopback_only():
    """Any connection to a non-loopback address fails the test: the API test never touches the network."""
    mp = pytest.MonkeyPatch()
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in LOOPBACK and self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {host}")
        return real_connect(self, address)

    mp.setattr(socket.socket, "connect", guarded)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def server(live_demo):
    return live_demo[1]


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def test_predict_endpoint(client, ct_path):
    from gradio_client import handle_file

    label, details = client.predict(handle_file(ct_path), "btmri", api_name="/predict")
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == {"glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"}
    assert abs(sum(confidences.values()) - 1.0) < 1e-3
    assert label["label"] == max(confidences, key=confidences.get) == details["prediction"]
    assert set(details["contributions"]["sources"]) == {"learned", "templates", "descriptions"}
    assert details["image"]["format"] == "DICOM" and details["image"]["meta"]["modality"] == "CT"
    assert details["modality_check"]["dicom_header"]  # CT in the header, MRI in the preset


def test_predict_with_custom_classes_by_keyword(client, ct_path):
    from gradio_client import handle_file

    label, _ = client.predict(image=handle_file(ct_path), preset="custom", classes="calcified nodule\nnormal lung",
                              api_name="/predict")
    assert {c["label"] for c in label["confidences"]} == {"calcified nodule", "normal lung"}


def test_explain_endpoint(client, ct_path):
    from gradio_client import handle_file
    from PIL import Image

    overlay_path, info = client.predict(handle_file(ct_path), "btmri", api_name="/explain")
    assert Path(overlay_path).is_file()
    with Image.open(overlay_path) as im:
        assert im.size == (224, 224)
    assert info["method"] == "gradcam" and "not lesion localisation" in info["note"]
    rollout_path, info2 = client.predict(handle_file(ct_path), "btmri", method="rollout", alpha=0.8,
                                         api_name="/explain")
    assert Path(rollout_path).is_file() and info2["method"] == "rollout"


def test_trust_fields_through_the_client(client, ct_path):
    from gradio_client import handle_file

    _, details = client.predict(handle_file(ct_path), "btmri", api_name="/predict")
    assert details["calibrated_probs"] is None and details["prediction_set"] is None  # zero-shot: not calibrated
    _, info = client.predict(handle_file(ct_path), "btmri", faithfulness=True, api_name="/explain")
    f = info["faithfulness"]
    assert set(f) == {"deletion_auc", "random_auc", "steps"} and f["steps"] == 4
    assert 0 <= f["deletion_auc"] <= 1 and 0 <= f["random_auc"] <= 1


def test_bad_input_is_a_readable_error(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(bad)), "btmri", api_name="/predict")
    assert "not an image file" in str(info.value) and "Traceback" not in str(info.value)


def test_concurrent_calls(client, ct_path):
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(ct_path), "btmri", api_name=name)
            for name in ("/predict", "/explain", "/predict", "/explain")]
    results = [job.result(timeout=180) for job in jobs]
    labels, overlays = results[0::2], results[1::2]
    assert all(set(label["confidences"][0]) >= {"label", "confidence"} for label, _ in labels)
    assert all(Path(overlay).is_file() for overlay, _ in overlays)


def test_only_the_documented_endpoints_are_public(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/predict", "/explain"}


def test_identical_overlays_never_share_a_cache_file(tiny, ct_path, tmp_path):
    """Gradio rewrites a PIL output's cache file (named by its bytes' hash) on every render, so two
    identical overlays served at once could truncate one mid-download: each render is its own file."""
    import gradio as gr

    from app.predict.view import overlay_image
    from dpt_core.explanation import explain_image
    from dpt_core.imageio import load_image
    from dpt_core.predictor import Predictor
    from dpt_core.workflow import setup_classes

    setup = setup_classes("btmri")
    predictor = Predictor(tiny, setup.class_names, setup.templates, setup.descriptions,
                          template=setup.template, n_ctx=setup.n_ctx)
    expl = explain_image(predictor, load_image(ct_path).image, "rollout")
    component = gr.Image(type="pil", format="png")
    paths = {component.postprocess(overlay_image(expl, 0.45)).path for _ in range(2)}
    assert len(paths) == 2
    first, second = (overlay_image(expl, 0.45) for _ in range(2))
    assert first.tobytes() == second.tobytes()  # the pixels are the same; only the tag differs
