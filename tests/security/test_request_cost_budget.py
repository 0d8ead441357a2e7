"""Threat: cheap requests that buy minutes of shared CPU.

100 classes x 200 descriptions x ~390 characters was within every per-field limit and cost
~40 minutes of text encoding on the full-size model; 16 near-limit PNGs in a 1 MB zip cost
26 s of decoding; class names had no length limit. A request is now checked as a whole,
before any work, against the limits of ``dpt_core.limits`` (stated in the README).
"""
from __future__ import annotations

import uuid

import pytest
from PIL import Image

import dpt_core.limits as limits
from app.choices import parse_classes_text, parse_descriptions_text
from app.services import Services
from dpt_core.limits import BudgetError, check_text_budget
from dpt_core.prompt_bank import encode_cached
from dpt_core.text import TextEncoder


@pytest.fixture
def services(tiny):
    return Services(tiny)


@pytest.fixture
def encoder_calls(monkeypatch):
    calls = []
    real = TextEncoder.encode_texts

    def counting(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(TextEncoder, "encode_texts", counting)
    return calls


def sentences(n: int, chars: int = 60) -> list[str]:
    tag = uuid.uuid4().hex  # unique per call: the session's text cache never holds them yet
    return [f"finding {i} {tag} ".ljust(chars, "x") + "." for i in range(n)]


def test_the_forty_minute_request_is_refused_before_any_encoding(services, encoder_calls):
    classes = [f"class {i}" for i in range(100)]
    descriptions = {c: sentences(200, 390) for c in classes}
    with pytest.raises(BudgetError, match="characters"):
        services.setup("custom", classes, descriptions)
    assert encoder_calls == []


def test_too_many_new_sentences_are_refused_with_the_limit_named(services, encoder_calls):
    classes = [f"class {i}" for i in range(10)]
    descriptions = {c: sentences(45) for c in classes}  # 450 short sentences: few characters, many prompts
    with pytest.raises(BudgetError, match=f"at most {limits.MAX_NEW_SENTENCES}"):
        services.setup("custom", classes, descriptions)
    assert encoder_calls == []


def test_repeated_sentences_come_from_the_text_cache(tiny, encoder_calls):
    first = sentences(300)
    encode_cached(tiny, first)  # an earlier request encoded these
    again = first + sentences(150)  # 450 prompts, of which 150 are new: within budget
    a, b = (f"{c} {uuid.uuid4().hex}" for c in "ab")  # class names no earlier test filled a template with
    cost = check_text_budget([a, b], ["a photo of a {}."], {a: again[:225], b: again[225:]},
                             tiny.text_cache.__contains__)
    assert cost.new_sentences == 150 + 2 and cost.sentences == 452  # +2: the filled templates
    encoder_calls.clear()
    encode_cached(tiny, again)
    assert encoder_calls == [150]  # only the new ones were encoded
    with pytest.raises(BudgetError):  # the same request on a server that never saw them
        check_text_budget([a, b], ["a photo of a {}."], {a: again[:225], b: again[225:]})


def test_shipped_presets_fit_the_budget_on_a_cold_cache():
    from dpt_core.presets import list_presets
    from dpt_core.workflow import setup_classes

    for name in list_presets():
        s = setup_classes(name)
        check_text_budget(s.class_names, s.templates, s.descriptions)


def test_class_names_have_a_length_limit(services):
    with pytest.raises(ValueError, match="limited to"):
        services.setup("custom", ["x" * (limits.MAX_CLASS_NAME_CHARS + 1), "normal"])


def test_upload_batches_have_a_decoded_pixel_budget(tmp_path, monkeypatch):
    import app.uploads as jobs

    decoded = []
    monkeypatch.setattr(jobs, "load_image", lambda p: decoded.append(p))
    monkeypatch.setattr(limits, "MAX_BATCH_PIXELS", 1_000_000)
    paths = []
    for i in range(5):  # 5 x 500 x 500 = 1.25 million pixels, small files
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (500, 500)).save(path)
        paths.append(str(path))
    with pytest.raises(jobs.FewShotError, match="million pixels"):
        jobs.load_class_images(["a", "b"], [paths[:3], paths[3:]])
    summary = jobs.summarize_card(paths)
    assert summary.n_images == 0 and "million pixels" in summary.problems[0]
    assert decoded == []  # refused from the headers, nothing decoded


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[" * 5000])
def test_deeply_nested_json_is_a_clear_error(text):
    with pytest.raises(ValueError, match="nested too deeply|not valid JSON"):
        parse_classes_text(text)
    with pytest.raises(ValueError, match="nested too deeply|not valid JSON"):
        parse_descriptions_text('{"a": ' + text + "}")


def test_class_lists_must_hold_names():
    with pytest.raises(ValueError, match="strings"):
        parse_classes_text('[{"a": 1}, null]')
    assert parse_classes_text('["glioma", "normal"]') == ["glioma", "normal"]


def test_a_zip_of_huge_images_is_refused_before_decoding(tmp_path, monkeypatch):
    import io
    import zipfile

    import app.zip_import as jobs

    decoded = []
    monkeypatch.setattr(jobs, "load_image", lambda data: decoded.append(data))
    monkeypatch.setattr(limits, "MAX_BATCH_PIXELS", 1_000_000)
    buf = io.BytesIO()
    Image.new("RGB", (600, 600)).save(buf, format="PNG")
    upload = tmp_path / "upload.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for i in range(3):  # 3 x 0.36 million pixels
            zf.writestr(f"glioma/{i}.png", buf.getvalue())
    with pytest.raises(jobs.FewShotError, match="million pixels"):
        jobs.import_zip(upload, ["glioma", "normal"], tmp_path / "dest")
    assert decoded == [] and not (tmp_path / "dest").exists()


@pytest.mark.parametrize("n", [0, 31, 10**9, float("inf"), float("nan"), "many"])
def test_generation_asks_for_a_bounded_number_of_sentences(services, n):
    with pytest.raises(BudgetError):
        services.generate_descriptions(services.setup("btmri"), "glioma tumor", "retrieval", n)


def test_an_api_caller_gets_the_budget_message_before_any_work(tiny, ct_path, encoder_calls):
    import json

    import gradio as gr

    from app.predict.handlers import PredictController

    classes = ["glioma tumor", "meningioma tumor", "pituitary tumor", "normal brain"]
    descriptions = json.dumps({c: sentences(100, 390) for c in classes})  # 156,000 characters
    with pytest.raises(gr.Error) as err:
        PredictController(Services(tiny)).api_predict(ct_path, "btmri", None, json.dumps(classes), descriptions)
    assert "at most 60,000" in err.value.message and "Traceback" not in err.value.message
    assert encoder_calls == []
