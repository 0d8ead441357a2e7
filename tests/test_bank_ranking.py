"""Ranking of the shipped banks into a MANIFEST: offline on the tiny backbone, never into the shipped one."""
import json
import shutil

import pytest

from dpt_core.bank_ranking import (
    RankingError,
    keep_fresh,
    rank_banks_into_manifest,
    read_ranking,
)
from dpt_core.cli import main
from dpt_core.descriptions import MANIFEST, bank_hash, load_bank


@pytest.fixture()
def manifest(tmp_path):
    path = tmp_path / "MANIFEST.json"
    shutil.copy(MANIFEST, path)
    return path


def test_ranking_is_recorded_with_its_backbone_and_bank_hash(tiny, manifest):
    section = rank_banks_into_manifest(tiny, ["retina"], manifest)
    doc = json.loads(manifest.read_text())
    assert doc["ranking"] == section and doc["sha256"] == json.loads(MANIFEST.read_text())["sha256"]
    assert section["backbone"] == "tiny" and section["random_weights"] is True
    entry = section["banks"]["retina.json"]
    assert entry["sha256"] == bank_hash("retina")
    bank = load_bank("retina")
    assert list(entry["classes"]) == list(bank)
    for cls, r in entry["classes"].items():
        assert sorted(r["order"]) == list(range(len(bank[cls])))  # every sentence ranked once
        assert r["score"] == sorted(r["score"], reverse=True)
    ranked = read_ranking("retina", manifest)
    assert [s for s, _ in ranked["cataract"]] == [bank["cataract"][i] for i in entry["classes"]["cataract"]["order"]]


def test_a_stale_ranking_is_not_read_back(tiny, manifest):
    rank_banks_into_manifest(tiny, ["retina"], manifest)
    doc = json.loads(manifest.read_text())
    doc["ranking"]["banks"]["retina.json"]["sha256"] = "0" * 64  # as if the bank was edited since
    manifest.write_text(json.dumps(doc))
    assert read_ranking("retina", manifest) is None
    assert keep_fresh(doc["ranking"], {"retina.json": bank_hash("retina")}) is None


def test_random_weights_never_write_the_shipped_manifest(tiny, capsys):
    before = MANIFEST.read_bytes()
    with pytest.raises(RankingError, match="random weights"):
        rank_banks_into_manifest(tiny, ["retina"])
    assert main(["rank-banks", "--backbone", "tiny", "--preset", "retina"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "random weights" in err[-1]
    assert MANIFEST.read_bytes() == before


def test_cli_ranks_into_another_manifest(manifest, capsys):
    assert main(["rank-banks", "--backbone", "tiny", "--preset", "retina", "--manifest", str(manifest)]) == 0
    assert "ranked 108 sentences of 1 bank(s)" in capsys.readouterr().out
    assert main(["rank-banks", "--backbone", "tiny", "--preset", "nope", "--manifest", str(manifest)]) == 1


def test_rewriting_the_hashes_keeps_a_fresh_ranking_and_drops_a_stale_one(tiny, manifest, monkeypatch):
    import dpt_core.descriptions as descriptions

    rank_banks_into_manifest(tiny, ["retina"], manifest)
    monkeypatch.setattr(descriptions, "MANIFEST", manifest)
    descriptions.write_manifest()
    assert "retina.json" in json.loads(manifest.read_text())["ranking"]["banks"]
    doc = json.loads(manifest.read_text())
    doc["ranking"]["banks"]["retina.json"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(doc))
    descriptions.write_manifest()
    assert "ranking" not in json.loads(manifest.read_text())
