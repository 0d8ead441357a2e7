"""The shipped presets and the expert description bank (data, with a content hash)."""
import json
import re
from pathlib import Path

import pytest

from dpt_core.descriptions import DESCRIPTIONS_DIR, MANIFEST, bank_hash, load_bank
from dpt_core.presets import list_presets, load_preset

PRESETS = ["btmri", "busi", "chmnist", "covid", "ctkidney", "dermamnist", "kneexray", "kvasir",
           "lungcolon", "octmnist", "retina"]


def test_the_eleven_presets_exist():
    assert list_presets() == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_has_an_ensemble_and_a_complete_bank(name):
    p = load_preset(name)
    assert len(p.templates) >= 6 and p.template in p.templates
    assert len(set(p.templates)) == len(p.templates)
    bank = load_bank(name)
    assert list(bank) == list(p.classes)  # every class has its set, in label order
    for cls, sentences in bank.items():
        assert len(sentences) >= 25, cls
        assert len({s.casefold() for s in sentences}) == len(sentences), cls
        for s in sentences:
            assert s.endswith(".") and 5 <= len(s.split()) <= 40, s
            assert not re.match(r"^\s*(\d+[.)]|[-*])", s), s


def test_no_sentence_is_shared_between_classes():
    owner = {}
    for name in PRESETS:
        for cls, sentences in load_bank(name).items():
            for s in sentences:
                key = " ".join(s.casefold().split())
                assert key not in owner, f"{s!r} in {owner.get(key)} and {name}/{cls}"
                owner[key] = f"{name}/{cls}"
    assert len(owner) >= 25 * 56


def test_manifest_hashes_match_the_bank_files():
    manifest = json.loads(MANIFEST.read_text())["sha256"]
    files = {p.name for p in DESCRIPTIONS_DIR.glob("*.json")} - {MANIFEST.name}
    assert set(manifest) == files
    for fname, digest in manifest.items():
        assert bank_hash(Path(fname).stem) == digest, fname


def test_paper_facts_in_presets():
    assert load_preset("kneexray").n_ctx == 6 and load_preset("covid").n_ctx == 6
    assert load_preset("retina").n_ctx == 4
    w = load_preset("dermamnist").weights("few-shot")
    assert (w.l1, w.kl) == (25.0, 20.0)
    w = load_preset("covid").weights("base2novel")
    assert (w.l1, w.kl) == (18.75, 0.5)
    assert load_preset("retina").classes == ("diabetic retinopathy", "glaucoma", "cataract", "normal retina")
