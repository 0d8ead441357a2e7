"""Class-description generation: the "expert prompts" of Biomed-DPT.

Biomed-DPT distils knowledge from short sentences that describe what a disease
class *looks like* in an imaging modality and organ. This module produces such
sentences for a class behind one small interface, ``DescriptionGenerator``:

* ``HFInferenceGenerator`` asks an instruct LLM through Hugging Face Inference
  Providers (needs a token and the network);
* ``LocalTransformersGenerator`` runs a transformers text-generation pipeline on
  this machine (needs the model weights);
* ``RetrievalGenerator`` is the offline fallback: it returns sentences from the
  shipped description bank, for the same or the nearest class. It never
  pretends to generate, and its note says so.

Failures surface as ``GenerationError`` whose message is meant to be shown
as-is to a clinician in the UI. Cleaning of the raw LLM text is done by
``parse_sentences``, shared by both LLM back ends.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from .bank_search import (
    BankClass,
    BankSearch,
    Miss,
    bank_classes_from_mapping,
    shipped_bank_classes,
)
from .errors import InputError, ResourceError

logger = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Some variety helps: the sentences should cover distinct presentations of a class.
_TEMPERATURE = 0.7
_MIN_WORDS = 3  # shorter fragments ("Glioma.", "Key features") are headings, not descriptions


# --------------------------------------------------------------------------- API types


@dataclass(frozen=True)
class GenerationRequest:
    class_name: str
    modality: str  # e.g. "MRI"
    organ: str  # e.g. "brain"
    n: int = 10
    other_classes: tuple[str, ...] = ()  # ask for features that discriminate against these

    def __post_init__(self) -> None:
        if not self.class_name.strip():
            raise InputError("class_name must not be empty")
        if self.n < 1:
            raise InputError(f"n must be at least 1, got {self.n}")
        # Accept any sequence from callers but keep the request hashable.
        object.__setattr__(self, "other_classes", tuple(self.other_classes))


@dataclass(frozen=True)
class GenerationResult:
    sentences: list[str]
    backend: str  # the generator's `name`
    note: str  # provenance, shown next to the sentences in the UI


class GenerationError(ResourceError):
    """A failure whose message can be shown to a clinician as-is (no stack trace, no secrets)."""


@runtime_checkable
class DescriptionGenerator(Protocol):
    name: str

    def generate(self, request: GenerationRequest) -> GenerationResult: ...


# --------------------------------------------------------------------------- prompt


def _readable(name: str) -> str:
    return " ".join(name.replace("_", " ").split())


def build_prompt(request: GenerationRequest) -> list[dict[str, str]]:
    """Chat messages (system + user) following the query of the Biomed-DPT paper."""
    cls = _readable(request.class_name)
    where = f" in the {request.organ.strip()}" if request.organ.strip() else ""
    system = (
        "You are an expert radiologist and pathologist. You write concise, factual descriptions "
        "of the visual findings seen in medical images."
    )
    # The first sentence is the paper's query verbatim; the rest makes the answer machine-readable.
    lines = [
        f"Give {request.n} textual descriptive sentences of visual discriminative features for "
        f"distinct medical cases of {cls} found in {request.modality.strip()}{where}.",
    ]
    others = [_readable(c) for c in request.other_classes if _key(c) != _key(request.class_name)]
    if others:
        lines.append(f"Focus on features that distinguish {cls} from: {', '.join(others)}.")
    lines.append(
        f"Answer with exactly {request.n} sentences, one sentence per line, with no numbering, "
        "bullets, headings, introduction or closing remarks. Describe only visual findings "
        "(location, shape, size, margins, intensity or colour, texture, patterns); do not mention "
        "symptoms, treatment, epidemiology or patient history. Keep each sentence under 30 words."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


# --------------------------------------------------------------------------- parsing

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
# Numbering or a bullet at the start of a line: "1.", "2)", "(3)", "#4", "-", "*", "•", "–".
# "(?!\d)" keeps measurements such as "1.5 cm" intact.
_PREFIX = re.compile(r"^\s*(?:\(\d{1,3}\)|#\d{1,3}[.):]?|\d{1,3}[.):](?!\d)|[-*•–—·+▪●](?=\s))\s*")
# Inline enumeration when the model ignored "one per line": "... margins. 2. The lesion ..."
_INLINE_ITEM = re.compile(r"(?<=[.!?:;])\s+(?=\(?\d{1,3}[.)]\s+\S)")
_LABEL = re.compile(
    r"^(?:sentence|description|feature|finding|case|example|point|item)\s*#?\d*\s*[:.)\-–]\s*",
    re.IGNORECASE,
)
_HEADING = re.compile(r"^#{1,6}\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“'(\[]?[A-Z])")
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "vs.", "etc.", "approx.", "cf.", "dr.", "fig.", "no."})
_QUOTES = {'"': '"', "“": "”", "'": "'", "‘": "’", "«": "»"}
# Chatty openers and closers; a description never starts like this.
_CHATTER = re.compile(
    r"^(?:here (?:are|is)|sure|certainly|of course|okay|ok\b|absolutely|below (?:are|is)|"
    r"the following|i hope|hope this|let me know|note\b|please|feel free|as an ai|i'm|i am|"
    r"i can|i cannot|these (?:sentences|descriptions)|in summary|to summari[sz]e)\b",
    re.IGNORECASE,
)


def _strip_markup(s: str) -> str:
    s = _HEADING.sub("", s)
    for _ in range(3):  # "- 1. **Sentence 2:** ..." nests several prefixes
        s = s.replace("**", "").replace("__", "").replace("`", "")  # bold first: "* **1.** ..."
        s = _PREFIX.sub("", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\1", s)  # *italics*
        s = re.sub(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)", r"\1", s)  # _italics_
        s = _LABEL.sub("", s).strip()
        if len(s) >= 2 and s[0] in _QUOTES and s.rstrip(".")[-1:] == _QUOTES[s[0]]:
            s = s[1:].rstrip(".")[:-1] + ("." if s.endswith(".") else "")
        s = s.strip()
    return s


def _split_sentences(line: str) -> list[str]:
    pieces = _SENTENCE_END.split(line)
    merged: list[str] = []
    for piece in pieces:
        # Re-join splits made after an abbreviation ("e.g. MRI shows ...").
        if merged and merged[-1].split()[-1:] and merged[-1].split()[-1].lower() in _ABBREVIATIONS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def parse_sentences(text: str, max_sentences: int, max_words: int = 40) -> list[str]:
    """Clean raw LLM output into at most ``max_sentences`` description sentences.

    Strips numbering, bullets, markdown, quotes, "Sentence 3:" labels and chatty
    preambles/closings ("Here are 5 sentences:", "I hope this helps!"); splits a
    paragraph into sentences; ends every sentence with a period; drops
    case-insensitive duplicates. Sentences over ``max_words`` words are *dropped*
    rather than truncated: a sentence cut mid-clause would be a misleading prompt.
    """
    if max_sentences <= 0 or not text:
        return []
    text = _THINK.sub("\n", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = []
    for raw in text.split("\n"):
        if raw.strip().startswith("```"):
            continue
        lines.extend(_INLINE_ITEM.split(raw.strip()))

    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        for piece in _split_sentences(_strip_markup(line)):
            s = " ".join(_strip_markup(piece).split())
            if not s or s.endswith((":", "?")) or _CHATTER.match(s):
                continue  # empty, a preamble/heading, a question to the user, or chatter
            s = s.rstrip(" ,;!–-")
            if s and not s.endswith("."):
                s += "."
            words = len(s.split())
            if words < _MIN_WORDS or words > max_words:
                continue
            key = s.lower().rstrip(". ")
            if key in seen:
                continue
            seen.add(key)
            out.append(s)
            if len(out) >= max_sentences:
                return out
    return out


def _count_note(got: int, wanted: int) -> str:
    return "" if got >= wanted else f" Only {got} of the {wanted} requested sentences were usable."


# --------------------------------------------------------------------------- Hugging Face Inference


def _stored_token() -> str | None:
    """Token saved by `hf auth login` (or HF_TOKEN); a broken token store must not crash the UI."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - e.g. a failing OIDC exchange; treated as "no token"
        logger.debug("could not read a stored Hugging Face token")
        return None


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[token]") if secret else text


class HFInferenceGenerator:
    """Instruct LLM through ``huggingface_hub.InferenceClient.chat_completion``."""

    name = "hf-inference"

    def __init__(
        self,
        model: str = DEFAULT_HF_MODEL,
        token: str | None = None,
        timeout: float = 30.0,
        client: Any = None,
        server_token: bool = True,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._token = token
        # False for a request made for someone else: then HF_TOKEN / the stored login are never used.
        self._server_token = server_token
        self._client = client  # injected in tests: any object with chat_completion(messages, ...)

    def __repr__(self) -> str:  # never show the token
        return f"HFInferenceGenerator(model={self.model!r}, timeout={self.timeout})"

    def _resolve_token(self) -> str | None:
        fallbacks = (os.environ.get("HF_TOKEN"), _stored_token()) if self._server_token else ()
        for candidate in (self._token, *fallbacks):
            if candidate and candidate.strip():
                return candidate.strip()
        return None

    def _get_client(self, token: str) -> Any:
        if self._client is None:
            from huggingface_hub import InferenceClient

            self._client = InferenceClient(model=self.model, token=token, timeout=self.timeout)
        return self._client

    def generate(self, request: GenerationRequest) -> GenerationResult:
        token = self._resolve_token()
        if token is None:
            raise GenerationError("No Hugging Face token: set HF_TOKEN or paste a token.")
        messages = build_prompt(request)
        try:
            response = self._get_client(token).chat_completion(
                messages, max_tokens=min(2048, 60 * request.n + 100), temperature=_TEMPERATURE
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a readable message
            logger.warning(
                "chat_completion with %s failed: %s: %s",
                self.model, type(exc).__name__, _redact(str(exc), token),
            )
            raise GenerationError(self._explain(exc)) from None  # no chained trace in the UI
        sentences = parse_sentences(_response_text(response), request.n)
        if not sentences:
            raise GenerationError(
                f"The model {self.model} answered, but no usable description sentences could be "
                "read from its reply. Try again or use another model."
            )
        note = (
            f"Generated by {self.model} through Hugging Face Inference; review before use."
            + _count_note(len(sentences), request.n)
        )
        return GenerationResult(sentences=sentences, backend=self.name, note=note)

    def _explain(self, exc: Exception) -> str:
        """Map an exception from huggingface_hub / httpx2 to a message for the user."""
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            if status in (401, 403):
                return ("The Hugging Face token was refused: check that it is valid and allowed "
                        "to call Inference Providers.")
            if status == 402:
                return "Your Hugging Face inference credits are used up."
            if status == 404:
                return f"The model {self.model} is not available on the Hugging Face inference service."
            if status in (400, 422):
                return f"The model {self.model} rejected the request (it may not support chat)."
            if status == 429:
                return "Too many requests to the Hugging Face inference service: wait a minute and retry."
            if status == 504:
                return f"The model took longer than {self.timeout:g} s to answer."
            if status >= 500:
                return "The Hugging Face inference service is unavailable right now: try again later."
            return f"The Hugging Face inference service returned an error (HTTP {status})."
        # Checked after HTTP errors: HfHubHTTPError is an OSError, InferenceTimeoutError a TimeoutError.
        if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
            return f"The model took longer than {self.timeout:g} s to answer."
        if isinstance(exc, ConnectionError) or _is_transport_error(exc):
            # Includes huggingface_hub's OfflineModeIsEnabled (HF_HUB_OFFLINE=1).
            return "The inference service could not be reached (no network or offline mode)."
        return "The description could not be generated: unexpected error from the inference service."


def _is_transport_error(exc: Exception) -> bool:
    # httpx2 network errors are not builtin ConnectionErrors; import lazily, it may be absent.
    try:
        import httpx2

        return isinstance(exc, httpx2.TransportError)
    except ImportError:
        return False


def _get(obj: Any, key: str) -> Any:
    # ChatCompletionOutput supports attributes and keys; fakes and plain dicts only one of them.
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return content if isinstance(content, str) else ""


def _response_text(response: Any) -> str:
    try:
        return _content_text(_get(_get(_get(response, "choices")[0], "message"), "content"))
    except (KeyError, IndexError, AttributeError, TypeError):
        raise GenerationError("The inference service returned an answer in an unexpected format.") from None


# --------------------------------------------------------------------------- local transformers


class LocalTransformersGenerator:
    """A transformers text-generation pipeline on this machine, built on first use."""

    name = "local"

    def __init__(
        self,
        model: str,
        device: str | None = None,
        pipeline: Callable[..., Any] | None = None,
        max_new_tokens: int = 400,
    ) -> None:
        self.model = model  # local folder or Hub id
        self.device = device
        self.max_new_tokens = max_new_tokens
        self._pipe = pipeline  # injected in tests
        self._lock = threading.Lock()  # Gradio may call concurrently; build the model once

    def _pipeline(self) -> Callable[..., Any]:
        with self._lock:
            if self._pipe is None:
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                try:
                    from transformers import pipeline

                    self._pipe = pipeline("text-generation", model=self.model, device=device)
                except Exception as exc:  # noqa: BLE001 - missing files, offline, OOM, bad id ...
                    logger.warning("loading %s failed: %s: %s", self.model, type(exc).__name__, exc)
                    raise GenerationError(
                        f"The local model '{self.model}' could not be loaded: check the folder or "
                        "model id, and that its files are downloaded."
                    ) from None
            return self._pipe

    def generate(self, request: GenerationRequest) -> GenerationResult:
        pipe = self._pipeline()
        try:
            output = pipe(
                build_prompt(request),
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=_TEMPERATURE,
            )
        except Exception as exc:  # noqa: BLE001
            logger.warning("generation with %s failed: %s: %s", self.model, type(exc).__name__, exc)
            raise GenerationError(f"The local model '{self.model}' failed while generating.") from None
        sentences = parse_sentences(_pipeline_text(output), request.n)
        if not sentences:
            raise GenerationError(
                f"The local model '{self.model}' answered, but no usable description sentences "
                "could be read from its reply."
            )
        note = f"Generated locally by {self.model}; review before use." + _count_note(len(sentences), request.n)
        return GenerationResult(sentences=sentences, backend=self.name, note=note)


def _pipeline_text(output: Any) -> str:
    """The assistant's text from a pipeline result, chat form or plain-string form."""
    while isinstance(output, list) and output:  # [{...}] or batch-nested [[{...}]]
        output = output[0]
    generated = output.get("generated_text") if isinstance(output, Mapping) else output
    if isinstance(generated, list):  # the conversation with the new assistant message last
        for message in reversed(generated):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return _content_text(message.get("content"))
        return ""
    return generated if isinstance(generated, str) else ""


# --------------------------------------------------------------------------- retrieval fallback

def _key(name: str) -> str:
    """Case-, underscore- and hyphen-insensitive class key."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


class RetrievalGenerator:
    """Offline fallback: the sentences of the same or a similar class in the shipped banks.

    Only banks of the request's modality are searched, and a weak or ambiguous match is
    an error that says so (``bank_search`` holds the rules). ``bank`` is either a list of
    ``BankClass`` (each tagged with its modality; default: every shipped bank) or a plain
    ``{class: sentences}`` mapping, taken as a bank of the request's own modality.
    """

    name = "retrieval"

    def __init__(
        self,
        bank: Mapping[str, Sequence[str]] | Sequence[BankClass] | None = None,
        embed: Callable[[list[str]], torch.Tensor] | None = None,
        **search_options: float,
    ) -> None:
        self.bank = shipped_bank_classes() if bank is None else bank
        self.embed = embed
        self._options = search_options
        self._searches: dict[str, BankSearch] = {}  # by modality for a plain mapping, else one

    def _search(self, modality: str, organ: str) -> BankSearch:
        if not isinstance(self.bank, Mapping):
            key = ""
            classes: Sequence[BankClass] = self.bank
        else:
            key = f"{modality.strip().casefold()}|{organ.strip().casefold()}"
            classes = bank_classes_from_mapping(self.bank, modality, organ)
        if key not in self._searches:
            self._searches[key] = BankSearch(classes, self.embed, **self._options)
        return self._searches[key]

    def generate(self, request: GenerationRequest) -> GenerationResult:
        found = self._search(request.modality, request.organ).search(request.class_name, request.modality)
        asked = _readable(request.class_name)
        if isinstance(found, Miss):
            raise GenerationError(
                f"'{asked}': {found.reason}. Use a language model to generate descriptions, or write them."
            )
        c = found.bank_class
        source = f"the shipped {c.preset} bank" if c.preset else "the shipped description bank"
        if found.method == "exact":
            note = f"Retrieved from {source} (class: {c.name}), not generated; review before accepting."
        else:
            via = "its sentence" if found.evidence != c.name else "its name"
            note = (
                f"Retrieved from {source} (nearest class: {c.name}, matched by {found.method} on {via} "
                f"\"{found.evidence}\", score {found.score:.2f}), not generated. '{asked}' is not in the bank: "
                f"these sentences describe '{c.name}'; review them before accepting."
            )
        return GenerationResult(list(c.sentences[: request.n]), self.name, note)


# --------------------------------------------------------------------------- factory

_KINDS: dict[str, type] = {
    "hf-inference": HFInferenceGenerator,
    "local": LocalTransformersGenerator,
    "retrieval": RetrievalGenerator,
}


def make_generator(kind: str, **kwargs: Any) -> DescriptionGenerator:
    """Build a generator by kind: "hf-inference", "local" or "retrieval"; kwargs go to its constructor."""
    cls = _KINDS.get(kind.strip().lower().replace("_", "-"))
    if cls is None:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return cls(**kwargs)
