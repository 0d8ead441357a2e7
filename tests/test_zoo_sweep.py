"""The sweep on local Ray (started once for this module, 2 CPUs) over a synthetic benchmark in
BiomedCoOp's exact layout, on the tiny backbone: recorded runs, resume, an isolated failure,
base-to-novel, and publish --dry-run. A handful of 1-2 epoch runs in all."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from biomedcoop_bench import corrupt, write_benchmark
from test_zoo_recipe import dassl_draw

from dpt_core.cli import main
from dpt_core.registry import read_registry
from dpt_core.sweep import SweepSpec, run_sweep
from dpt_core.train import TrainConfig, lr_at

ray = pytest.importorskip("ray", reason="the sweep needs ray (requirements-dev.txt)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": repo, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("root"))


@pytest.fixture(scope="module")
def few_shot_runs(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    spec = SweepSpec(root=str(bench), out=str(out), datasets=("busi", "btmri"), shots=(1, 2), seeds=(1,),
                     epochs=2, backbone="tiny")
    lines: list[str] = []
    report = run_sweep(spec, on_line=lines.append)
    return spec, out, report, lines


def _config(out, name):
    return json.loads((out / name / "config.json").read_text())


def test_every_run_finishes_with_a_progress_line(few_shot_runs):
    _, out, report, lines = few_shot_runs
    assert not report.failed and len(report.finished) == 4
    done = [line for line in lines if line.startswith("done ")]
    assert len(done) == 4 and all("accuracy" in line for line in done)
    assert sorted(int(line.rsplit("; ", 1)[1].split()[0]) for line in done) == [0, 1, 2, 3]  # runs left


@pytest.mark.parametrize("preset, folder", [("busi", "BUSI"), ("btmri", "BTMRI")])
@pytest.mark.parametrize("shots", [1, 2])
def test_run_records_the_draw_and_recipe(few_shot_runs, bench, preset, folder, shots):
    _, out, _, _ = few_shot_runs
    cfg = _config(out, f"few_shot/{preset}/shots_{shots}/seed_1")
    split = bench / folder / f"split_{folder}.json"
    rows = json.loads(split.read_text())["train"]
    tr, data = cfg["training"], cfg["data"]
    assert data["train_images"] == dassl_draw(rows, shots, 1)
    assert data["split_file"] == split.name
    assert data["split_sha256"] == hashlib.sha256(split.read_bytes()).hexdigest()
    n = len(data["train_images"])
    assert tr["steps_per_epoch"] == (n // 4 if n >= 4 else 1)
    assert (tr["protocol"], tr["shots"], tr["seed"], tr["epochs"], tr["batch_size"], tr["class_position"]) == \
        ("few_shot", shots, 1, 2, 4, "end")
    assert tr["mode"] == "exact"  # the sweep's default
    history = tr["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all({"ce", "l1", "kl", "total"} <= set(h) for h in history)
    assert history[0]["lr"] == pytest.approx(1e-5)  # epoch 0: the warm-up lr
    assert history[1]["lr"] == pytest.approx(0.0025)  # epoch 1: the cosine restarts at the full lr
    assert history[1]["lr"] == pytest.approx(lr_at(TrainConfig(epochs=2), 1))
    assert 0.0 <= cfg["metrics"]["accuracy"] <= 1.0


def test_resume_skips_finished_runs(few_shot_runs):
    spec, out, _, _ = few_shot_runs
    target = out / "few_shot/busi/shots_1/seed_1/config.json"
    before = target.stat().st_mtime_ns
    again = run_sweep(spec, on_line=lambda _: None)
    assert len(again.skipped) == 4 and not again.finished and not again.failed
    assert target.stat().st_mtime_ns == before


def test_one_corrupt_image_fails_one_run_only(bench, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(bench / "BUSI", root / "BUSI")
    rows = json.loads((root / "BUSI" / "split_BUSI.json").read_text())["train"]
    only_seed_1 = set(dassl_draw(rows, 1, 1)) - set(dassl_draw(rows, 1, 2))
    corrupt(root / "BUSI" / "BUSI" / sorted(only_seed_1)[0])
    code = main(["sweep", "--root", str(root), "--datasets", "busi", "--shots", "1", "--seeds", "1,2",
                 "--epochs", "1", "--backbone", "tiny", "--out", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 1  # the number of failed runs
    assert "FAILED few_shot/busi/shots_1/seed_1" in out and "cannot read" in out
    assert "done few_shot/busi/shots_1/seed_2" in out
    assert (tmp_path / "runs/few_shot/busi/shots_1/seed_2/config.json").is_file()
    assert not (tmp_path / "runs/few_shot/busi/shots_1/seed_1").exists()
    assert "1 failed" in err


def test_base_to_novel_run(bench, tmp_path):
    spec = SweepSpec(root=str(bench), out=str(tmp_path), protocol="base2novel", datasets=("btmri",), shots=(2,),
                     seeds=(3,), epochs=1, backbone="tiny")
    report = run_sweep(spec, on_line=lambda _: None)
    assert not report.failed, report.failed
    cfg = _config(tmp_path, "base2novel/btmri/shots_2/seed_3")
    m = cfg["metrics"]
    assert {"base_accuracy", "novel_accuracy", "harmonic_mean"} <= set(m)
    b, n = m["base_accuracy"], m["novel_accuracy"]
    assert m["harmonic_mean"] == pytest.approx(0.0 if b + n == 0 else 2 * b * n / (b + n))
    assert cfg["class_names"] == ["glioma tumor", "meningioma tumor"]  # ceil(4/2) base classes
    rows = json.loads((bench / "BTMRI" / "split_BTMRI.json").read_text())["train"]
    label = {r[0]: r[1] for r in rows}
    expected = [rel for rel in dassl_draw(rows, 2, 3) if label[rel] < 2]  # drawn over all, then base kept
    assert cfg["data"]["train_images"] == expected
    assert cfg["training"]["protocol"] == "base2novel" and cfg["training"]["epochs"] == 1


def test_publish_dry_run_writes_cards_and_registry(few_shot_runs, tmp_path, capsys):
    _, out, _, _ = few_shot_runs
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"checkpoints": [{"id": "keep-me", "label": "x", "preset": "busi",
                                                     "method": "biomedcoop", "protocol": "few_shot", "shots": 16}]}))
    assert main(["publish", str(out), "--org", "someone", "--dry-run", "--registry", str(registry)]) == 0
    assert "dry run" in capsys.readouterr().out
    entries = {e.id: e for e in read_registry(registry)}
    run_id = "hf-hub:someone/biomed-dpt-zoo/few_shot/busi/shots_2/seed_1"
    assert "keep-me" in entries and run_id in entries and len(entries) == 5
    cfg = _config(out, "few_shot/busi/shots_2/seed_1")
    assert entries[run_id].accuracy == pytest.approx(cfg["metrics"]["accuracy"])
    assert (entries[run_id].preset, entries[run_id].shots, entries[run_id].seed) == ("busi", 2, 1)
    card = (out / "few_shot/busi/shots_2/seed_1/README.md").read_text()
    assert "## Recipe" in card and "split_BUSI.json" in card and "not a medical device" in card
    assert "few_shot/btmri/shots_1/seed_1" in (out / "README.md").read_text()


def test_publish_uploads_every_run_to_one_private_repo(few_shot_runs, tmp_path, monkeypatch):
    import huggingface_hub

    from dpt_core.publish import publish

    calls = {}

    class FakeApi:  # records what would be sent; no network
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok, repo_type):
            calls["create"] = (repo_id, private)
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, folder_path, repo_id, allow_patterns, commit_message, repo_type):
            calls["upload"] = (folder_path, repo_id, sorted(allow_patterns))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _, out, _, _ = few_shot_runs
    result = publish(out, "someone", token="t", registry_path=tmp_path / "registry.json")
    assert calls["create"] == ("someone/biomed-dpt-zoo", True)
    folder, repo, files = calls["upload"]
    assert folder == str(out) and repo == "someone/biomed-dpt-zoo"
    assert "README.md" in files and len(files) == 1 + 3 * 4
    assert "few_shot/btmri/shots_2/seed_1/prompts.safetensors" in files
    assert result.url == "https://hub.example/someone/biomed-dpt-zoo" and len(result.entries) == 4
