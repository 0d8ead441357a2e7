"""Rules a description-bank sentence must follow, as a checkable function.

A bank sentence is shown to clinicians as "evidence" for a class and teaches
the prompts, so it must be a positive finding visible in one image of the
dataset's modality, specific to its class. The rules are written out for
people in ``assets/descriptions/RULES.md``; this module is their executable
form (tests run it over every shipped bank; ``python -m dpt_core.bank_rules
FILE.json PRESET`` checks a user's file). Each rule is a word pattern with the
modalities it applies to, so a clinician can read and extend the table.

The checks are lexical on purpose: they catch the common ways a sentence
stops being image evidence (negation, hedging, touch, time, Doppler, contrast
phases, the other side, demographics, grading talk, colour in a grayscale
modality) and measurable near-duplicates between classes. They cannot judge
medical truth; that stays with the reviewer.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

GRAYSCALE_MODALITIES = frozenset({"MRI", "CT", "X-ray", "ultrasound", "OCT"})
ALL = None  # a rule that applies to every modality

# Near-duplicate rule: two sentences of different classes of one dataset whose
# content-word sets overlap with Jaccard >= this value say the same thing.
NEAR_DUPLICATE_JACCARD = 0.5
# A sentence must carry at least this many content words besides the class
# name, modality, organ and filler words; fewer means it restates the label.
MIN_CONTENT_WORDS = 3
# At most this share of a class's sentences may name the class itself, so the
# evidence does not follow the label word.
MAX_SHARE_NAMING_CLASS = 0.5
MIN_SENTENCES_PER_CLASS = 25


@dataclass(frozen=True)
class Rule:
    name: str  # short id shown in failures
    why: str  # one line for the reader of a failure
    pattern: re.Pattern[str]
    modalities: frozenset[str] | None = ALL  # None: every modality


def _rule(name: str, why: str, words: str, modalities: Iterable[str] | None = ALL) -> Rule:
    return Rule(name, why, re.compile(words, re.IGNORECASE),
                None if modalities is None else frozenset(modalities))


RULES: tuple[Rule, ...] = (
    _rule("negation", "a text encoder scores the words after 'no'; describe what is there",
          r"\b(no|not|none|nor|neither|never|nothing|without|absent|absence|lacks?|lacking|devoid|"
          r"free of|rather than|instead of|unlike|cannot|\w+n't)\b"),
    _rule("hedge", "say what is seen, not what may be seen",
          r"\b(may|might|could|can|sometimes|occasionally|possibly|perhaps|often|usually|typically|"
          r"rarely|frequently|either)\b"),
    _rule("touch", "touch and palpation are not in an image",
          r"\b(palpa\w*|touch\w*|tender\w*|firm\w*|rubbery|itch\w*|pain\w*|feels?|dimple sign|"
          r"squeez\w*|pinch\w*|mobile|movable)\b"),
    _rule("real-time", "one still frame shows no probe movement or compression",
          r"\b(real[- ]time|cine|compressib\w*|compression|under pressure|transducer|probe|sweep\w*|elastograph\w*|stiff\w*|"
          r"moves?|moving|dynamic)\b", {"ultrasound"}),
    _rule("doppler", "a grayscale B-mode image shows no flow",
          r"\b(doppler|vascular\w*|vessels?|flow\w*|perfus\w*|hyperaemi\w*|hyperemi\w*)\b",
          {"ultrasound"}),
    _rule("contrast-phase", "one CT slice shows one phase; enhancement and HU need more",
          r"\b(enhanc\w*|phases?|arterial|venous|nephrographic|corticomedullary|excretory|delayed|"
          r"wash[- ]?out|wash[- ]?in|hounsfield|hu)\b", {"CT"}),
    _rule("time", "one image shows one moment; change over time is not in it",
          r"\b(over time|interval|previous\w*|prior|follow[- ]?up|progress\w*|since|evolv\w*|"
          r"chang(e|es|ed|ing) (in|over)|grow(s|ing)? (over|from|into)|enlarg(es|ing)|"
          r"history|months?|years?|weeks?|days?|recent\w*|new(ly)? appear\w*|stable|"
          r"longstanding|long-standing)\b"),
    _rule("other-side", "one image shows one side, eye or knee",
          r"\b(contralateral|fellow eye|other (eye|knee|breast|side|hip)|opposite (eye|knee|breast|side)|"
          r"both (eyes|knees|breasts)|symmetric(al)? with the other)\b"),
    _rule("demographics", "age, sex and history are not image findings",
          r"\b(patients?|year[- ]old|elderly|young\w*|older|age[ds]?|women|woman|men|man|males?|"
          r"females?|child(ren)?|paediatric|pediatric|infants?|adults?|sex|gender|smok\w*|"
          r"ethnic\w*|fair[- ]skinned|skin type)\b"),
    _rule("body-site", "a dermoscopic field does not show where on the body it was taken",
          r"\b(face|facial|scalp|trunk|torso|back|legs?|arms?|hands?|feet|foot|acral|palms?|soles?|"
          r"nails?|head and neck|sun[- ]exposed|extremit\w*|ears?|nose|cheeks?)\b", {"dermatoscopy"}),
    _rule("grading-talk", "describe the finding, not the rule that grades or classifies it",
          r"\b(kellgren|lawrence|kl|bi-?rads|grad(e|es|ed|ing)|criteri\w*|classif\w*|categor\w*|"
          r"by definition|definition|defined as|scor(e|es|ed|ing)|stag(e|es|ed|ing))\b"),
    _rule("support-device", "monitoring lines and tubes are confounders, not findings",
          r"\b((endotracheal|tracheostomy|nasogastric|feeding|chest|drainage) tubes?|catheters?|electrodes?|"
          r"ecg|ekg|pacemakers?|picc|central (venous )?lines?|sternal wires?|monitoring|support devices?|"
          r"nephrostomy|ureteral stents?)\b"),
    _rule("colour-in-grayscale", "a grayscale modality has no colour",
          r"\b(colou?r\w*|red|reddish|redness|green\w*|blue\w*|bluish|yellow\w*|orange\w*|purple\w*|pink\w*|"
          r"brown\w*|violet|magenta|cyan|tan|crimson|scarlet|hue\w*|tint\w*|rosy|golden|amber)\b",
          GRAYSCALE_MODALITIES),
)

def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOPWORDS = _wordset("""
a an the and or of in on at to by with within into onto from for as is are was were be been being
this that these those its it their there here which who whose than then so such each every any some
over under between across along around through throughout beside behind beyond upon toward towards
per about against among up down out off one two three several many much more most less few very
has have had having also both only just same other
""")
# Words that carry no finding: naming the image, the act of seeing, or a lesion in general.
_FILLER = _wordset("""
image images scan scans photo photograph picture view views slice slices frame field section shows show
showing shown seen see visible appears appear appearance typical typically consistent feature features
finding findings case example pattern lesion lesions tissue disease condition diagnosis suggest
suggests suggesting suggestive indicates indicating indicate characteristic classic sign signs
evident demonstrates demonstrating depicts depicting present presence identified noted
""")


@dataclass(frozen=True)
class Violation:
    cls: str
    sentence: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.cls}: {self.sentence!r} ({self.detail})"


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits; hyphenated words split)."""
    return re.findall(r"[a-z0-9]+", text.casefold())


def _stem(word: str) -> str:
    # Crude plural folding so "cysts"/"cyst" count as one word in the overlap rule.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> frozenset[str]:
    """The words of a sentence that carry meaning: stop words removed, plurals folded."""
    return frozenset(_stem(w) for w in words(text) if w not in _STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def rule_hits(sentence: str, modality: str) -> list[tuple[Rule, str]]:
    """The word rules a sentence breaks in a modality, with the matching text."""
    hits = []
    for rule in RULES:
        if rule.modalities is not None and modality not in rule.modalities:
            continue
        m = rule.pattern.search(sentence)
        if m:
            hits.append((rule, m.group(0)))
    return hits


def label_words(cls: str, modality: str, organ: str) -> frozenset[str]:
    """Words that only restate the label: the class name, the modality and the organ."""
    return content_words(f"{cls} {modality} {organ}")


def restates_label(sentence: str, cls: str, modality: str, organ: str) -> bool:
    """Fewer than MIN_CONTENT_WORDS words remain once label, stop and filler words are removed."""
    rest = content_words(sentence) - label_words(cls, modality, organ) - {_stem(w) for w in _FILLER}
    return len(rest) < MIN_CONTENT_WORDS


def names_class(sentence: str, cls: str) -> bool:
    """Whether the sentence contains the class name as a phrase (plurals folded)."""
    want = [_stem(w) for w in words(cls)]
    got = [_stem(w) for w in words(sentence)]
    return any(got[i:i + len(want)] == want for i in range(len(got) - len(want) + 1))


def near_duplicates(bank: Mapping[str, Sequence[str]],
                    threshold: float = NEAR_DUPLICATE_JACCARD) -> list[tuple[str, str, str, str, float]]:
    """Pairs of sentences from different classes whose content words overlap >= threshold."""
    items = [(cls, s, content_words(s)) for cls, sentences in bank.items() for s in sentences]
    out = []
    for i, (ca, sa, wa) in enumerate(items):
        for cb, sb, wb in items[i + 1:]:
            if ca != cb:
                j = jaccard(wa, wb)
                if j >= threshold:
                    out.append((ca, sa, cb, sb, j))
    return out


def check_bank(bank: Mapping[str, Sequence[str]], modality: str, organ: str = "") -> list[Violation]:
    """Every rule violation of a bank ``{class: [sentences]}`` of one dataset."""
    out: list[Violation] = []
    for cls, sentences in bank.items():
        if len(sentences) < MIN_SENTENCES_PER_CLASS:
            out.append(Violation(cls, "", "count", f"{len(sentences)} sentences; at least "
                                                   f"{MIN_SENTENCES_PER_CLASS}"))
        for s in sentences:
            for rule, text in rule_hits(s, modality):
                out.append(Violation(cls, s, rule.name, f"{text!r}: {rule.why}"))
            if restates_label(s, cls, modality, organ):
                out.append(Violation(cls, s, "restates-label",
                                     f"fewer than {MIN_CONTENT_WORDS} words beyond the class name"))
        for s in sentences:
            for other in bank:
                # A class named inside this one ("polyps" in "dyed lifted polyps") may be named.
                if other != cls and not names_class(cls, other) and names_class(s, other):
                    out.append(Violation(cls, s, "names-other-class",
                                         f"names {other!r}, which pulls the sentence towards that class"))
        naming = sum(names_class(s, cls) for s in sentences)
        if sentences and naming / len(sentences) > MAX_SHARE_NAMING_CLASS:
            out.append(Violation(cls, "", "names-class", f"{naming}/{len(sentences)} sentences name the "
                                 f"class; at most {MAX_SHARE_NAMING_CLASS:.0%}"))
    for ca, sa, cb, sb, j in near_duplicates(bank):
        out.append(Violation(ca, sa, "near-duplicate", f"Jaccard {j:.2f} with {cb}: {sb!r}"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print each problem of a descriptions file; exit 1 if there is any."""
    import argparse
    import sys

    from .descriptions import DescriptionsError, load_descriptions_file
    from .presets import load_preset

    parser = argparse.ArgumentParser(prog="python -m dpt_core.bank_rules",
                                     description="Check a descriptions file against the bank rules.")
    parser.add_argument("file", help="descriptions JSON {class: [sentences]}")
    parser.add_argument("preset", help="the preset whose modality and organ apply, e.g. busi")
    args = parser.parse_args(argv)
    try:
        bank = load_descriptions_file(args.file)
        preset = load_preset(args.preset)
    except (DescriptionsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = check_bank(bank, preset.modality, preset.organ)
    for v in problems:
        print(v)
    print(f"{len(problems)} problem(s) in {sum(map(len, bank.values()))} sentences")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
