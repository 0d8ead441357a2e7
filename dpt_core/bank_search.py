"""Search of the shipped description banks for a class the user names (the offline "generate").

The retrieval fallback of description generation proposes the sentences of a
shipped class that resembles the one the user asks for. A wrong proposal is
worse than none (a clinician may accept it), so the search is deliberately
strict:

- only banks of the request's imaging modality are searched: a breast
  ultrasound query never gets kidney CT sentences;
- a query made only of generic words (normal, tumour, cell, scan ...) matches
  nothing: those words are shared by many classes and say nothing specific;
- a disease query never gets a normal class, and a normal query only a normal one;
- UK and US spellings are folded ("tumour" = "tumor", "oedema" = "edema"), as
  are plurals and a few plain synonyms ("renal" = "kidney");
- class names *and* their sentences are searched, so a finding named only in
  the sentences ("calculus") still leads to its class;
- every word of the query must be found in the class: in its name (then the
  rest may be anywhere in the class) or all together in one of its sentences;
  a named kind of tumour ("adenoma") is met by a tumour class ("pituitary tumor");
- below a coverage threshold, or when two classes match equally well, the
  answer is "no similar class in the shipped banks" instead of a guess.

Words are weighted by how rare they are among the candidate classes (an
inverse document frequency), so a finding word that one class owns counts
more than one that several share; the organ of the preset ("colon") is
context and is left out, unless a class name carries it ("lung
adenocarcinoma"). With a backbone that has real weights, its text encoder can
choose too (cosine between the query and each class name and sentence, with
its own threshold), but only among classes that share a literal word with the
query. Both thresholds are heuristics, stated here on purpose; the encoder's
has not been calibrated on the real BiomedCLIP yet.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

# A lexical match must cover this share of the query's weighted words (every word must be in
# the class somewhere; words found only in its sentences count for SENTENCE_WEIGHT).
LEXICAL_THRESHOLD = 0.5
# A match in a sentence counts a little less than one in the class name itself.
SENTENCE_WEIGHT = 0.8
# The best class must beat the runner-up by this much, else the query is ambiguous.
MARGIN = 0.05
# Bonus for the share of the class name that the query accounts for (a tie-breaker).
NAME_BONUS = 0.1
# Cosine between query and class phrases (real text encoder) needed to propose a class, and
# the lead over the runner-up (cosines of a CLIP text tower crowd together, so it is small).
EMBEDDING_THRESHOLD = 0.8
EMBEDDING_MARGIN = 0.02

NO_MATCH = "no similar class in the shipped banks"

_STOPWORDS = frozenset({
    "a", "an", "the", "of", "in", "on", "and", "or", "with", "to", "for", "by", "at", "as", "from", "into",
    "its", "is", "are", "be", "this", "that", "these", "those", "seen", "shows", "showing", "show", "appear",
    "appears", "looks", "look", "like"
})
# Words that many classes share; they never make a match on their own.
GENERIC = frozenset({
    "normal", "healthy", "unremarkable", "tumor", "tumors", "cell", "cells", "scan", "scans", "image", "images", "lesion",
    "lesions", "disease", "diseases", "finding", "findings", "tissue", "tissues", "abnormal", "abnormality",
    "benign", "malignant", "mass", "masses", "case", "cases", "photo", "photograph", "picture", "view",
    "type", "class", "sample", "slide", "patch"
})
# Modifiers of degree, size, time and side: they qualify a finding but do not name one.
MODIFIERS = frozenset({
    "low", "high", "grade", "early", "late", "advanced", "acute", "chronic", "mild", "moderate", "severe",
    "small", "large", "big", "tiny", "primary", "secondary", "stage", "focal", "diffuse", "left", "right",
    "bilateral", "multiple", "single", "suspected", "possible", "typical", "atypical"
})
_NORMAL_WORDS = frozenset({"normal", "healthy", "unremarkable"})

# Whole-word UK -> US spellings that the suffix rules below do not catch.
_SPELLING = {
    "oesophagus": "esophagus", "oesophageal": "esophageal", "oesophagitis": "esophagitis",
    "oedema": "edema", "oedematous": "edematous", "caecum": "cecum", "caecal": "cecal",
    "haemorrhage": "hemorrhage", "haemorrhages": "hemorrhages", "haemorrhagic": "hemorrhagic",
    "haematoma": "hematoma", "haemangioma": "hemangioma", "anaemia": "anemia", "leukaemia": "leukemia",
    "ischaemia": "ischemia", "ischaemic": "ischemic", "paediatric": "pediatric", "foetal": "fetal",
    "grey": "gray", "fibre": "fiber", "fibres": "fibers", "centre": "center", "centres": "centers",
    "calibre": "caliber", "tumour": "tumor", "tumours": "tumors", "colour": "color", "colours": "colors",
    "haemosiderin": "hemosiderin", "oestrogen": "estrogen", "dyspnoea": "dyspnea",
}
# Plain synonyms folded to one word, so a query can use either.
_SYNONYMS = {
    "renal": "kidney", "nephric": "kidney", "calculus": "stone", "calculi": "stone",
    "nephrolithiasis": "stone", "urolithiasis": "stone", "pulmonary": "lung", "cerebral": "brain",
    "intracranial": "brain", "mammary": "breast", "hepatic": "liver", "gastric": "stomach",
    "colonic": "colon", "colorectal": "colon", "neoplasm": "tumor", "neoplasms": "tumor",
    "cancer": "carcinoma", "malignancy": "carcinoma", "adenocarcinoma": "adeno carcinoma",
    "dme": "macular edema",
    "cnv": "choroidal neovascularization", "amd": "macular degeneration",
    "uc": "ulcerative colitis", "gerd": "esophagitis", "reflux": "esophagitis",
}
# Named kinds of tumour: each also counts as the informative word "neoplasm", which a class
# named "... tumor" carries too, so "pituitary adenoma" reaches "pituitary tumor". The bare
# word "tumour" stays generic: it names no finding of its own.
NEOPLASM = "neoplasm"
_TUMOUR_KINDS = frozenset({
    "carcinoma", "adenoma", "sarcoma", "lymphoma", "melanoma", "glioma", "glioblastoma", "astrocytoma",
    "oligodendroglioma", "ependymoma", "meningioma", "schwannoma", "neuroma", "fibroadenoma", "papilloma",
    "oncocytoma", "angiomyolipoma", "myeloma", "blastoma", "hepatoma", "metastasis", "metastase",
})
_TOKEN = re.compile(r"[a-z0-9]+")


def _fold_word(word: str) -> str:
    word = _SPELLING.get(word, word)
    word = re.sub(r"^(o|a)e(?=[a-z]{3})", "e", word)  # oe-/ae- openings: oedema, aetiology
    word = re.sub(r"(?<=[a-z])(ae|oe)(?=[a-z])", "e", word)  # haem-, diarrhoea, leukaemia
    word = re.sub(r"(?<=[a-z]{3})our(s?)$", r"or\1", word)  # tumour, colour (not "four")
    word = re.sub(r"(?<=[a-z]{3})is(e|ed|es|ing|ation|ations)$", r"iz\1", word)  # keratinised
    return word


def _stem(word: str) -> str:
    # Plural and simple inflection: crypts -> crypt, polyps -> polyp; "-sis"/"-us" words stay.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "is", "us")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Folded content words of a text: case, UK/US spelling, synonyms and plurals folded."""
    out: list[str] = []
    for raw in _TOKEN.findall(text.casefold().replace("_", " ")):
        folded = _SYNONYMS.get(_fold_word(raw), _fold_word(raw))
        for w in folded.split():
            w = _stem(w)
            if w not in _STOPWORDS:
                out.append(w)
            if w in _TUMOUR_KINDS:
                out.append(NEOPLASM)
    return out


def folded_key(name: str) -> str:
    """A class name as a matching key with spellings folded ("Oesophagitis" = "esophagitis")."""
    return " ".join(words(name))


def _informative(name: str) -> set[str]:
    """A class name's words that can match a query ("kidney tumor" -> kidney, neoplasm)."""
    ws = words(name)
    return {w for w in ws if w not in GENERIC and w not in MODIFIERS} | ({NEOPLASM} if "tumor" in ws else set())


def _class_words(c: BankClass) -> set[str]:
    return set(words(c.name)).union(*(words(s) for s in c.sentences))


def is_normal_name(name: str) -> bool:
    """Whether a class (or query) names normal appearance ("normal brain", "healthy knee", "benign tissue")."""
    w = set(words(name))
    return bool(w & _NORMAL_WORDS) or {"benign", "tissue"} <= w


@dataclass(frozen=True)
class BankClass:
    """One class of a shipped bank, with the modality of its preset."""

    preset: str
    modality: str
    name: str
    sentences: tuple[str, ...]
    organ: str = ""  # the preset's organ(s), e.g. "lung, colon"


@dataclass(frozen=True)
class Hit:
    """The class proposed for a query, with what made the match."""

    bank_class: BankClass
    score: float  # lexical coverage or cosine, in [0, 1]
    evidence: str  # the class name or the sentence that matched best
    method: str  # "exact" | "words" | "embedding"


@dataclass(frozen=True)
class Miss:
    """No proposal, with the reason in a sentence for the user."""

    reason: str
    candidates: tuple[str, ...] = field(default_factory=tuple)  # near-equal classes, when ambiguous


def shipped_bank_classes() -> list[BankClass]:
    """Every class of every shipped bank, tagged with its preset and modality."""
    return list(_shipped())


@lru_cache(maxsize=1)
def _shipped() -> tuple[BankClass, ...]:
    from .descriptions import (
        load_bank,  # local: keeps this module importable on its own
    )
    from .presets import list_presets, load_preset

    out = []
    for preset in list_presets():
        p = load_preset(preset)
        for name, sentences in load_bank(preset).items():
            if sentences:
                out.append(BankClass(preset, p.modality, name, tuple(sentences), p.organ))
    return tuple(out)


def same_modality(a: str, b: str) -> bool:
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


class BankSearch:
    """Find the shipped class nearest to a named class, within one modality, or say there is none."""

    def __init__(
        self,
        classes: Sequence[BankClass],
        embed: Callable[[list[str]], torch.Tensor] | None = None,
        lexical_threshold: float = LEXICAL_THRESHOLD,
        embedding_threshold: float = EMBEDDING_THRESHOLD,
        margin: float = MARGIN,
        embedding_margin: float = EMBEDDING_MARGIN,
    ) -> None:
        self.classes = [c for c in classes if c.sentences]
        self.embed = embed
        self.lexical_threshold = lexical_threshold
        self.embedding_threshold = embedding_threshold
        self.margin = margin
        self.embedding_margin = embedding_margin
        self._embedded: dict[str, torch.Tensor] = {}  # phrase -> normalised feature

    def modalities(self) -> list[str]:
        return sorted({c.modality for c in self.classes}, key=str.casefold)

    def search(self, query: str, modality: str) -> Hit | Miss:
        """The best class of ``modality`` for ``query`` (a class name), or a ``Miss`` saying why not."""
        pool = [c for c in self.classes if same_modality(c.modality, modality)]
        if not pool:
            known = ", ".join(self.modalities()) or "none"
            return Miss(f"{NO_MATCH}: the shipped banks cover {known}, not {modality.strip() or 'this modality'}")
        key = folded_key(query)
        for c in pool:
            if folded_key(c.name) == key:
                return Hit(c, 1.0, c.name, "exact")
        q = list(dict.fromkeys(w for w in words(query) if w not in GENERIC and w not in MODIFIERS))
        if not q:
            return Miss(f"{NO_MATCH}: '{query.strip()}' has only generic words; name the finding itself")
        normal = is_normal_name(query)
        pool = [c for c in pool if is_normal_name(c.name) == normal]
        if not pool:
            return Miss(f"{NO_MATCH} among the {'normal' if normal else 'disease'} classes of {modality}")
        # The organ is context, not a finding: "colon polyp" asks for a polyp; every class of
        # the bank is of that organ anyway. A query that is only the organ names no finding.
        # An organ word that some class name carries ("lung adenocarcinoma") does tell classes
        # apart, so it stays.
        named = {w for c in pool for w in words(c.name)}
        organ = {w for c in pool for w in words(c.organ)} - named
        q = [w for w in q if w not in organ]
        if not q:
            return Miss(f"{NO_MATCH}: '{query.strip()}' names the organ but no finding; name the finding itself")
        if self.embed is not None:
            # The encoder may only choose among classes that share a literal word with the query:
            # its cosine threshold is a heuristic, and a shared word keeps a wild guess out.
            supported = [c for c in pool if any(w != NEOPLASM and w in _class_words(c) for w in q)]
            hit = self._by_embedding(query, modality, supported) if supported else None
            if hit is not None:
                return hit
        return self._by_words(query, q, pool)

    # ------------------------------------------------------------------ lexical
    def _by_words(self, query: str, q: list[str], pool: list[BankClass]) -> Hit | Miss:
        docs = {c.name: (_informative(c.name), [set(words(s)) for s in c.sentences]) for c in pool}
        n = len(pool)
        df = {w: sum(1 for name_w, sents in docs.values() if w in name_w.union(*sents)) for w in q}
        # A word that no class has cannot tell classes apart: it weighs as much as a word of one class.
        idf = {w: math.log(1.0 + n / (1.0 + max(df[w], 1))) for w in q}
        total = sum(idf.values())
        scored: list[tuple[float, str, BankClass]] = []
        coverage: dict[str, float] = {}
        for c in pool:
            name_w, sents = docs[c.name]
            if not self._covers(q, name_w, sents):
                continue
            # Weighted coverage: a word in the class name counts fully, one found only in a
            # sentence (or a tumour kind met by a tumour class) a little less.
            coverage[c.name] = sum(idf[w] * (1.0 if w in name_w else SENTENCE_WEIGHT) for w in q) / total
            # Tie-break by how much of the class name the query accounts for: "polyp" fits
            # "polyps" better than "dyed lifted polyps".
            in_name = [w for w in name_w if w in q or (w == NEOPLASM and any(x in _TUMOUR_KINDS for x in q))]
            name_share = len(in_name) / len(name_w) if name_w else 0.0
            if any(w in name_w for w in q):
                evidence = c.name
            else:  # the sentence that holds the most of the query
                best = max(range(len(sents)), key=lambda i, sents=sents: sum(idf[w] for w in q if w in sents[i]))
                evidence = c.sentences[best]
            scored.append((coverage[c.name] + NAME_BONUS * name_share, evidence, c))
        scored = [t for t in scored if coverage[t[2].name] >= self.lexical_threshold]
        found = self._decide(query, scored, 0.0, self.margin, "words")
        if isinstance(found, Hit):
            return Hit(found.bank_class, coverage[found.bank_class.name], found.evidence, found.method)
        return found

    @staticmethod
    def _covers(q: list[str], name_w: set[str], sents: list[set[str]]) -> bool:
        """Whether the class accounts for every word of the query.

        When the class name carries a query word itself ("pituitary" of "pituitary adenoma"),
        the other words may be found anywhere in the class, and a named kind of tumour is met
        by a tumour class. Otherwise one sentence must hold the whole query: words scattered
        over unrelated sentences ("basal" of "basal cisterns") are no evidence.
        "hypertensive retinopathy" is thus not "diabetic retinopathy".
        """
        if any(w in name_w and w != NEOPLASM for w in q):
            doc = name_w.union(*sents)
            return all(w in doc or (w in _TUMOUR_KINDS and NEOPLASM in doc) for w in q)
        return any(all(w in sw for w in q) for sw in sents)

    # ------------------------------------------------------------------ embedding
    def _by_embedding(self, query: str, modality: str, pool: list[BankClass]) -> Hit | None:
        def phrase(name: str) -> str:
            return f"{' '.join(name.replace('_', ' ').split())} in {modality}"

        texts = [phrase(c.name) for c in pool] + [s for c in pool for s in c.sentences]
        try:
            feats = self._features([phrase(query), *texts])
        except Exception:  # noqa: BLE001 - the fallback must not fail; words still work
            return None
        qf, rest = feats[0], feats[1:]
        scored: list[tuple[float, str, BankClass]] = []
        offset = len(pool)
        for i, c in enumerate(pool):
            best = (float(rest[i] @ qf), c.name)
            for j, s in enumerate(c.sentences):
                best = max(best, (float(rest[offset + j] @ qf), s))
            offset += len(c.sentences)
            scored.append((*best, c))
        decision = self._decide(query, scored, self.embedding_threshold, self.embedding_margin, "embedding")
        return decision if isinstance(decision, Hit) else None  # below threshold: let words try

    def _features(self, phrases: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(phrases) if p not in self._embedded]
        if missing:
            assert self.embed is not None
            with torch.no_grad():
                emb = torch.as_tensor(self.embed(missing), dtype=torch.float32).reshape(len(missing), -1)
            for p, e in zip(missing, F.normalize(emb, dim=-1), strict=True):
                self._embedded[p] = e
        return torch.stack([self._embedded[p] for p in phrases])

    # ------------------------------------------------------------------ decision
    @staticmethod
    def _decide(query: str, scored: list[tuple[float, str, BankClass]], threshold: float, margin: float,
                method: str) -> Hit | Miss:
        scored = sorted(scored, key=lambda t: -t[0])
        if not scored or scored[0][0] < threshold:
            return Miss(f"{NO_MATCH}: nothing there resembles '{query.strip()}' closely enough")
        best = scored[0]
        close = [t for t in scored[1:] if best[0] - t[0] < margin]
        if close:
            names = tuple(t[2].name for t in [best, *close])
            return Miss(f"{NO_MATCH}: '{query.strip()}' fits {', '.join(names)} equally well; "
                        "name the finding more precisely", names)
        return Hit(best[2], best[0], best[1], method)


def bank_classes_from_mapping(
    bank: Mapping[str, Sequence[str]], modality: str, organ: str = "", preset: str = ""
) -> list[BankClass]:
    """A plain ``{class: sentences}`` bank as classes of one modality and organ."""
    return [BankClass(preset, modality, name, tuple(s for s in sents if s and s.strip()), organ)
            for name, sents in bank.items()]
