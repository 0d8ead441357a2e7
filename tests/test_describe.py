"""Class-description generation: parsing, back ends with fakes, retrieval fallback. Offline, no model."""
from __future__ import annotations

import logging
import sys
import types

import httpx2
import pytest
import torch
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OfflineModeIsEnabled,
)

from dpt_core import describe
from dpt_core.describe import (
    DescriptionGenerator,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    HFInferenceGenerator,
    LocalTransformersGenerator,
    RetrievalGenerator,
    build_prompt,
    make_generator,
    parse_sentences,
)

TOKEN = "hf_SuperSecretToken123"
REQ = GenerationRequest("glioma_tumor", "MRI", "brain", n=5, other_classes=("meningioma tumor", "normal brain"))

MESSY = """Sure! Here are 5 descriptive sentences:

1. **Ring enhancement** surrounds a central necrotic core.
2) The lesion measures 1.5 cm with irregular margins
(3) "Peritumoral edema extends along white matter tracts."
#4 Sentence 4: *Heterogeneous* T2 signal is present within the mass.

- The mass crosses the corpus callosum.
* **Mass effect** causes midline shift.
• ring enhancement surrounds a central necrotic core.
### Key features:
I hope this helps! Let me know if you need more.
"""


# --------------------------------------------------------------------------- parse_sentences


def test_parse_cleans_numbering_bullets_markdown_preamble_and_duplicates():
    assert parse_sentences(MESSY, 10) == [
        "Ring enhancement surrounds a central necrotic core.",
        "The lesion measures 1.5 cm with irregular margins.",
        "Peritumoral edema extends along white matter tracts.",
        "Heterogeneous T2 signal is present within the mass.",
        "The mass crosses the corpus callosum.",
        "Mass effect causes midline shift.",
    ]


def test_parse_caps_at_max_sentences():
    assert len(parse_sentences(MESSY, 3)) == 3
    assert parse_sentences(MESSY, 0) == []
    assert parse_sentences("", 5) == []


def test_parse_splits_a_paragraph_and_inline_numbering():
    text = ("Glioma appears infiltrative, e.g. Along white matter tracts. It shows edema on T2! "
            "2. Margins are poorly defined;   the mass   is large.")
    assert parse_sentences(text, 10) == [
        "Glioma appears infiltrative, e.g. Along white matter tracts.",
        "It shows edema on T2.",
        "Margins are poorly defined; the mass is large.",
    ]


def test_parse_drops_overlong_and_fragment_sentences():
    long = "The lesion is " + "very " * 45 + "bright."
    text = f"{long}\nGlioma.\nA short but complete finding.\nIs there anything else?"
    assert parse_sentences(text, 5) == ["A short but complete finding."]
    assert parse_sentences(long, 5, max_words=100) == [long]


def test_parse_strips_think_blocks_and_code_fences():
    text = "<think>The user wants sentences.</think>\n```\nThe cyst is anechoic with posterior enhancement.\n```"
    assert parse_sentences(text, 5) == ["The cyst is anechoic with posterior enhancement."]


# --------------------------------------------------------------------------- prompt and request


def test_build_prompt_follows_the_paper_query():
    messages = build_prompt(REQ)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert ("Give 5 textual descriptive sentences of visual discriminative features for distinct "
            "medical cases of glioma tumor found in MRI in the brain.") in user
    assert "meningioma tumor, normal brain" in user
    assert "one sentence per line" in user and "no numbering" in user


def test_request_validation_and_hashable_other_classes():
    assert GenerationRequest("a", "MRI", "brain", other_classes=["b"]).other_classes == ("b",)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GenerationRequest(" ", "MRI", "brain")
    with pytest.raises(ValueError):
        GenerationRequest("glioma", "MRI", "brain", n=0)


# --------------------------------------------------------------------------- HF inference


class FakeClient:
    def __init__(self, reply: str = "", exc: Exception | None = None):
        self.reply, self.exc, self.calls = reply, exc, []

    def chat_completion(self, messages, **kwargs):
        self.calls.append((messages, kwargs))
        if self.exc is not None:
            raise self.exc
        return {"choices": [{"message": {"role": "assistant", "content": self.reply}}]}


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://router.huggingface.co/v1/chat/completions")
    response = httpx2.Response(status, request=request)
    return HfHubHTTPError(f"{status} Client Error for token {TOKEN}", response=response)


@pytest.fixture
def no_stored_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(describe, "_stored_token", lambda: None)


def test_hf_success_with_prompt_and_token_kept_private(no_stored_token):
    client = FakeClient(MESSY)
    result = HFInferenceGenerator(model="org/model", token=TOKEN, client=client).generate(REQ)
    assert isinstance(result, GenerationResult) and result.backend == "hf-inference"
    assert result.sentences == parse_sentences(MESSY, 5)
    assert "org/model" in result.note
    (messages, kwargs), = client.calls
    text = " ".join(m["content"] for m in messages)
    for part in ("glioma tumor", "MRI", "brain", "Give 5 "):
        assert part in text
    assert TOKEN not in text and TOKEN not in repr(HFInferenceGenerator(token=TOKEN))
    assert kwargs["max_tokens"] > 0 and "temperature" in kwargs


def test_hf_reads_token_from_env(no_stored_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    client = FakeClient("The tumor is bright on T2 images.")
    assert HFInferenceGenerator(client=client).generate(REQ).sentences == ["The tumor is bright on T2 images."]


def test_hf_without_token_fails_before_calling(no_stored_token):
    client = FakeClient("unused")
    with pytest.raises(GenerationError, match="No Hugging Face token"):
        HFInferenceGenerator(client=client).generate(REQ)
    assert client.calls == []


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InferenceTimeoutError("Inference call timed out"), "longer than 30 s"),
        (httpx2.ConnectError("connection refused"), "could not be reached"),
        (OfflineModeIsEnabled("offline"), "could not be reached"),
        (_http_error(401), "token was refused"),
        (_http_error(403), "token was refused"),
        (_http_error(404), "not available"),
        (_http_error(429), "Too many requests"),
        (_http_error(503), "unavailable right now"),
        (RuntimeError(f"weird {TOKEN}"), "unexpected error"),
    ],
)
def test_hf_errors_become_clear_messages(no_stored_token, caplog, exc, expected):
    gen = HFInferenceGenerator(token=TOKEN, client=FakeClient(exc=exc))
    with caplog.at_level(logging.DEBUG, logger="dpt_core.describe"):
        with pytest.raises(GenerationError, match=expected) as info:
            gen.generate(REQ)
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    assert info.value.__cause__ is None  # no chained trace for the UI


def test_hf_unusable_reply_is_an_error(no_stored_token):
    with pytest.raises(GenerationError, match="no usable"):
        HFInferenceGenerator(token=TOKEN, client=FakeClient("Here are the sentences:")).generate(REQ)


# --------------------------------------------------------------------------- local transformers


def test_local_chat_output_shape():
    calls = []

    def pipe(messages, **kwargs):
        calls.append(kwargs)
        return [{"generated_text": [*messages, {"role": "assistant", "content": MESSY}]}]

    gen = LocalTransformersGenerator("some/model", pipeline=pipe, max_new_tokens=123)
    result = gen.generate(REQ)
    assert result.backend == "local" and result.sentences == parse_sentences(MESSY, 5)
    assert calls[0]["max_new_tokens"] == 123


def test_local_plain_string_output_shape():
    gen = LocalTransformersGenerator("m", pipeline=lambda m, **k: [{"generated_text": "1. The cyst is round and dark."}])
    assert gen.generate(REQ).sentences == ["The cyst is round and dark."]


def test_local_load_failure_is_a_generation_error(monkeypatch, tmp_path):
    # A stand-in `transformers` module keeps this fast; the failure path is what is tested.
    calls = []

    def failing_pipeline(task, **kwargs):
        calls.append((task, kwargs))
        raise OSError(f"{kwargs['model']} is not a local folder and is not a valid model identifier")

    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(pipeline=failing_pipeline))
    gen = LocalTransformersGenerator(str(tmp_path / "missing-model"), device="cpu")
    with pytest.raises(GenerationError, match="could not be loaded"):
        gen.generate(REQ)
    with pytest.raises(GenerationError):  # a failed load is retried, not cached
        gen.generate(REQ)
    assert [c[0] for c in calls] == ["text-generation", "text-generation"]
    assert calls[0][1]["device"] == "cpu"


def test_local_generation_failure_is_a_generation_error():
    def pipe(messages, **kwargs):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(GenerationError, match="failed while generating"):
        LocalTransformersGenerator("m", pipeline=pipe).generate(REQ)


# --------------------------------------------------------------------------- retrieval

BANK = {
    "glioma tumor": ["Glioma sentence one.", "Glioma sentence two."],
    "kidney stone": ["Stone sentence."],
    "melanoma": ["Melanoma sentence."],
}


def test_retrieval_exact_match_is_case_and_underscore_insensitive():
    result = RetrievalGenerator(BANK).generate(GenerationRequest("Glioma_Tumor", "MRI", "brain", n=1))
    assert result.sentences == ["Glioma sentence one."] and result.backend == "retrieval"
    assert "shipped description bank" in result.note and "not generated" in result.note
    assert "glioma tumor" in result.note


def test_retrieval_nearest_by_embedding():
    vectors = {"glioma tumor in CT": [1.0, 0.0, 0.0], "kidney stone in CT": [0.0, 3.0, 0.0],
               "melanoma in CT": [0.0, 0.0, 1.0], "kidney concretion in CT": [0.1, 5.0, 0.2]}
    seen: list[list[str]] = []

    def embed(phrases: list[str]) -> torch.Tensor:
        seen.append(phrases)
        return torch.tensor([vectors.get(p, [0.0, 0.0, 0.1]) for p in phrases])

    gen = RetrievalGenerator(BANK, embed=embed)
    result = gen.generate(GenerationRequest("kidney_concretion", "CT", "kidney"))
    assert result.sentences == ["Stone sentence."]
    assert "nearest class: kidney stone" in result.note and "embedding" in result.note
    assert "not generated" in result.note
    assert "kidney concretion in CT" in seen[-1] and "Stone sentence." in seen[-1]  # names and sentences
    gen.generate(GenerationRequest("kidney concretion", "CT", "kidney"))
    assert len(seen) == 1  # every phrase is embedded once


def test_retrieval_nearest_by_word_overlap():
    result = RetrievalGenerator(BANK).generate(GenerationRequest("low-grade glioma", "MRI", "brain"))
    assert result.sentences == BANK["glioma tumor"]
    assert "nearest class: glioma tumor" in result.note


def test_retrieval_without_any_match_fails():
    with pytest.raises(GenerationError, match="no similar class in the shipped banks"):
        RetrievalGenerator(BANK).generate(GenerationRequest("of the pneumothorax", "X-ray", "chest"))


def test_retrieval_falls_back_to_word_overlap_when_embed_fails():
    def embed(phrases):
        raise RuntimeError("encoder not loaded")

    result = RetrievalGenerator(BANK, embed=embed).generate(GenerationRequest("malignant melanoma", "x", "skin"))
    assert result.sentences == ["Melanoma sentence."]


def test_retrieval_with_the_shipped_bank():
    import json

    from dpt_core.presets import ASSETS_DIR

    bank = {}
    for path in sorted((ASSETS_DIR / "descriptions").glob("*.json")):
        bank.update(json.loads(path.read_text(encoding="utf-8")))
    result = RetrievalGenerator(bank).generate(GenerationRequest("glioma tumor", "MRI", "brain", n=3))
    assert len(result.sentences) == 3


# --------------------------------------------------------------------------- factory


def test_make_generator_kinds():
    assert isinstance(make_generator("hf-inference", token=TOKEN, client=FakeClient()), HFInferenceGenerator)
    assert isinstance(make_generator("local", model="m", pipeline=lambda *a, **k: ""), LocalTransformersGenerator)
    retrieval = make_generator("Retrieval", bank=BANK)
    assert isinstance(retrieval, RetrievalGenerator) and isinstance(retrieval, DescriptionGenerator)
    with pytest.raises(ValueError, match="unknown generator kind"):
        make_generator("gpt")
