"""The cost budget of one request: what a caller may ask the server to compute at once.

Every other limit (100 classes, 200 sentences of 400 characters per class) was fine on
its own, yet together they allowed ~20,000 sentences, about 40 minutes of text encoding
on the full-size model on a CPU, inside the queue that every visitor shares. So a
request is also checked as a whole, *before* any work starts, and gets one clear
message when it is over budget. Sentences already in the backbone's text cache cost
nothing: repeating a request, or a preset's bank after its first use, is free.

The numbers are stated in the README ("Limits"); change them here only.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError

MAX_CLASS_NAME_CHARS = 100  # longer is a sentence, not a class name
MAX_NEW_SENTENCES = 400  # prompts not yet in the text cache, per request (~50 s on CPU, full model)
MAX_REQUEST_SENTENCES = 2_000  # all prompts of a request, cached or not (scoring cost and memory)
MAX_DESCRIPTION_CHARS = 60_000  # all description text of a request (every shipped bank is below 25,000)
MAX_BATCH_PIXELS = 256_000_000  # decoded pixels of one upload batch (e.g. 256 images of 1000x1000)
MAX_JSON_CHARS = 400_000  # a JSON text field of the API (classes, descriptions)
MAX_GENERATED_SENTENCES = 30  # sentences one "Generate descriptions" request may ask for
MAX_DATA_DESCRIPTION_CHARS = 2_000  # the training-data description written into config.json and the model card


class BudgetError(InputError):
    """The request asks for more work than one request may; the message says which limit."""


@dataclass(frozen=True)
class TextCost:
    sentences: int  # distinct prompts of the request
    new_sentences: int  # of which not yet cached
    description_chars: int


def check_data_description(text: str | None) -> str:
    """The training-data description, stripped; BudgetError when over ``MAX_DATA_DESCRIPTION_CHARS``."""
    text = (text or "").strip()
    if len(text) > MAX_DATA_DESCRIPTION_CHARS:
        raise BudgetError(f"the training-data description is limited to {MAX_DATA_DESCRIPTION_CHARS:,} characters")
    return text


def check_class_name_lengths(names: Iterable[str]) -> None:
    """BudgetError naming the limit when a class name is over ``MAX_CLASS_NAME_CHARS``."""
    if any(len(n) > MAX_CLASS_NAME_CHARS for n in names):
        raise BudgetError(f"class names are limited to {MAX_CLASS_NAME_CHARS} characters")


def check_text_budget(
    class_names: Sequence[str],
    templates: Sequence[str],
    descriptions: Mapping[str, Sequence[str]],
    is_cached: Callable[[str], bool] = lambda _text: False,
) -> TextCost:
    """The text cost of a class setup; BudgetError when over a limit (checked before encoding).

    Prompts are counted as the prompt bank builds them: each template filled with each
    class name, plus each class's descriptions; a sentence repeated anywhere counts once.
    """
    from .text import fill_template

    check_class_name_lengths(class_names)
    chars = sum(len(s) for name in class_names for s in descriptions.get(name, ()))
    if chars > MAX_DESCRIPTION_CHARS:
        raise BudgetError(f"the descriptions add up to {chars:,} characters; one request may use at most "
                          f"{MAX_DESCRIPTION_CHARS:,}. Use fewer or shorter sentences.")
    texts = dict.fromkeys(
        [fill_template(t, name) for name in class_names for t in templates]
        + [s for name in class_names for s in descriptions.get(name, ())]
    )
    if len(texts) > MAX_REQUEST_SENTENCES:
        raise BudgetError(f"this request has {len(texts):,} prompts (templates and descriptions); "
                          f"the limit is {MAX_REQUEST_SENTENCES:,}. Use fewer classes or sentences.")
    new = sum(1 for t in texts if not is_cached(t))
    if new > MAX_NEW_SENTENCES:
        raise BudgetError(f"this request needs {new:,} new sentences encoded; one request may add at most "
                          f"{MAX_NEW_SENTENCES:,}. Use fewer classes or sentences (sentences already "
                          "used on this server cost nothing).")
    return TextCost(len(texts), new, chars)


def check_generation_count(n: object) -> int:
    """The number of sentences a generation request asks for, as an int in 1..MAX_GENERATED_SENTENCES."""
    try:
        value = int(n)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        raise BudgetError("the number of sentences must be a whole number") from None
    if not 1 <= value <= MAX_GENERATED_SENTENCES:
        raise BudgetError(f"ask for 1 to {MAX_GENERATED_SENTENCES} sentences at a time")
    return value


def check_pixel_budget(pixel_counts: Iterable[int]) -> int:
    """Total decoded pixels of an upload batch; BudgetError when over ``MAX_BATCH_PIXELS``."""
    total = sum(pixel_counts)
    if total > MAX_BATCH_PIXELS:
        raise BudgetError(f"these images add up to {total / 1e6:,.0f} million pixels; one upload batch may have "
                          f"at most {MAX_BATCH_PIXELS / 1e6:,.0f} million. Use fewer or smaller images.")
    return total


def parse_json_field(text: str, what: str) -> Any:
    """``json.loads`` for a request field: bounded in size and nesting, errors as ValueError naming ``what``."""
    if len(text) > MAX_JSON_CHARS:
        raise BudgetError(f"{what}: the JSON text is longer than {MAX_JSON_CHARS:,} characters")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: not valid JSON ({exc.msg})") from None
    except RecursionError:  # e.g. [[[[...]]]] thousands deep
        raise InputError(f"{what}: the JSON is nested too deeply") from None


def check_upload_pixels(paths: Iterable[str]) -> int:
    """``check_pixel_budget`` over files, from their headers only (nothing is decoded here).

    Unreadable files count as zero: the decode that follows reports them one by one.
    """
    from .imageio import ImageLoadError, frame_pixels

    def pixels(path: str) -> int:
        try:
            return frame_pixels(path)
        except ImageLoadError:
            return 0

    return check_pixel_budget(pixels(p) for p in paths)
