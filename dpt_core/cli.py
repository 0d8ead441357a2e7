"""Command line: ``python -m dpt_core predict | train | sweep | evaluate | import-dassl | import-descriptions |
push | publish | aggregate | write-backbone | rank-banks``.

The flags and the ``--json`` outputs are a stable contract (see README).
Errors, usage mistakes included, are one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from .descriptions import same_classes
from .errors import UserError
from .integrity import finite_json
from .outpath import check_out_path, error_line

log = logging.getLogger("dpt_core")


class CLIError(UserError):
    """An error for the user: printed as one line, exit status 1."""


# ------------------------------------------------------------------------------------- helpers

def _backbone(args, ckpt=None):
    from .backbone import DEFAULT_BACKBONE, load_backbone

    recorded = ckpt.config.get("backbone") if ckpt is not None else None
    spec = args.backbone or recorded or os.environ.get("DPT_BACKBONE") or DEFAULT_BACKBONE
    if args.backbone and recorded and args.backbone != recorded:
        print(f"warning: --backbone {args.backbone} differs from the checkpoint's {recorded}", file=sys.stderr)
    bb = load_backbone(spec, args.device)
    if bb.random_weights:
        print(f"warning: backbone {spec} has random weights; predictions are meaningless", file=sys.stderr)
    return bb


def _checkpoint(args):
    if not getattr(args, "checkpoint", None):
        return None
    from .checkpoint import load_checkpoint

    return load_checkpoint(args.checkpoint, preset=args.preset)


def _descriptions(args):
    if not getattr(args, "descriptions", None):
        return None
    from .descriptions import load_descriptions_file

    return load_descriptions_file(args.descriptions)


def _read_classes_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CLIError(f"cannot read classes file: {exc}") from exc
    return [line.strip() for line in lines if line.strip()]


def _setup(args, ckpt, protocol="few_shot"):
    from .workflow import setup_classes, setup_from_checkpoint

    classes = _read_classes_file(args.classes_file) if getattr(args, "classes_file", None) else None
    desc = _descriptions(args)
    if ckpt is not None:
        setup = setup_from_checkpoint(ckpt, classes, desc)
        if args.preset and ckpt.preset and args.preset.lower() != ckpt.preset:
            print(f"warning: --preset {args.preset} differs from the checkpoint's {ckpt.preset}", file=sys.stderr)
        return setup
    if not args.preset and not classes:
        raise CLIError("name a --preset (or give --classes-file / --checkpoint)")
    return setup_classes(args.preset, classes, desc, protocol)


def _split_file(args) -> str | None:
    """--split-file, else split_<FOLDER>.json or the one split_*.json in the data folder, else None."""
    from .data import find_split_file

    if args.split_file:
        return args.split_file
    found = find_split_file(args.data)
    return str(found) if found else None


def _load_data(args, class_names, split: str):
    """(class names, records) from an image folder or a dataset root with a split file."""
    from .data import read_split_file, scan_image_folder

    split_file = _split_file(args)
    if split_file:
        return read_split_file(Path(args.data), split_file, split)
    return scan_image_folder(Path(args.data), class_names)


def _print_json(obj) -> None:
    json.dump(finite_json(obj), sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)  # JSON has no NaN
    sys.stdout.write("\n")


# ------------------------------------------------------------------------------------- commands

def cmd_predict(args) -> int:
    from .imageio import ImageLoadError, load_image
    from .predictor import Predictor

    ckpt = _checkpoint(args)
    setup = _setup(args, ckpt)  # validate cheap arguments before loading a backbone
    backbone = _backbone(args, ckpt)
    predictor = Predictor(backbone, setup.class_names, setup.templates, setup.descriptions,
                          template=setup.template, n_ctx=setup.n_ctx, checkpoint=ckpt,
                          class_position=args.class_position)
    results = []
    for path in args.images:
        try:
            image = load_image(path).image
        except ImageLoadError as exc:
            raise CLIError(f"{path}: {exc}") from exc
        pred = predictor.predict([image], coverage=args.coverage)[0]
        results.append({"image": path, **pred.to_json(top_k=args.top)})
        if not args.json:
            print(f"{path}: {pred.prediction} ({pred.probs[pred.prediction]:.3f})")
            for name, p in sorted(pred.probs.items(), key=lambda kv: -kv[1]):
                print(f"  {p:6.3f}  {name}")
            print("  calibrated: " + (", ".join(f"{n} {p:.3f}" for n, p in pred.calibrated_probs.items())
                                      if pred.calibrated_probs else predictor.calibration_note))
            if pred.prediction_set is not None:
                print("  " + pred.prediction_set.describe())
    if args.json:
        _print_json({"backbone": backbone.spec, "checkpoint": args.checkpoint, "classes": setup.class_names,
                     "results": results})
    return 0


def cmd_train(args) -> int:
    from .runs import RunSpec, run_training

    protocol = args.protocol.replace("-", "_")
    check_out_path(args.out, args.overwrite)  # before training: a result must never be lost at the end
    classes = _read_classes_file(args.classes_file) if getattr(args, "classes_file", None) else None
    if not args.preset and not classes:
        raise CLIError("name a --preset (or give --classes-file)")
    spec = RunSpec(data=args.data, out=args.out, shots=args.shots, seed=args.seed, preset=args.preset,
                   protocol=protocol, epochs=args.epochs, split_file=args.split_file, exact=args.exact,
                   teacher=args.teacher, class_position=args.class_position,
                   classes=tuple(classes) if classes else None, descriptions=_descriptions(args),
                   batch_size=args.batch_size, lr=args.lr, views=args.views, l1=args.l1, kl=args.kl,
                   visual_layout=args.visual_layout, data_description=args.data_description or "",
                   holdout=args.holdout)
    backbone = _backbone(args)
    if args.holdout is not None:  # the app's few-shot run, with its held-out check (dpt_core.fewshot)
        from .cli_fewshot import train_with_holdout
        from .runs import training_set

        setup, data, weights = training_set(spec, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        return train_with_holdout(args, backbone, setup, data, weights)
    print(f"training {args.shots}-shot {protocol} ({'exact' if args.exact else 'fast'} mode)", file=sys.stderr)

    def on_step(info):
        if info.step == info.steps_per_epoch - 1:  # the epoch's mean loss, as its history records it
            print(f"epoch {info.epoch + 1}/{info.epochs}  loss {info.history[-1]['total']:.4f}  lr {info.lr:.2e}  "
                  f"{info.elapsed_s:.1f}s", file=sys.stderr)

    result = run_training(spec, backbone, on_step=on_step, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    if result.test_metrics:
        print("test: " + json.dumps(finite_json(result.test_metrics), allow_nan=False), file=sys.stderr)
    check = result.holdout
    if check is not None:
        print(f"held-out: accuracy {check.adapted.accuracy:.4f} (zero-shot {check.zero_shot.accuracy:.4f}), "
              f"ECE {check.calibration.ece_before:.4f} -> {check.calibration.ece_after:.4f}", file=sys.stderr)
    if args.json:
        _print_json({"checkpoint": str(result.folder), "holdout": None, "metrics": result.metrics,
                     "calibration": check.calibration.to_config() if check else None})
    else:
        print(str(result.folder))
    return 0


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers, not {text!r}") from None


def cmd_sweep(args) -> int:
    from .sweep import SweepSpec, run_sweep

    protocol = args.protocol.replace("-", "_")
    datasets = () if args.datasets.strip().lower() == "all" else tuple(
        d.strip().lower() for d in args.datasets.split(",") if d.strip())
    spec = SweepSpec(root=args.root, out=args.out, protocol=protocol, datasets=datasets,
                     shots=_int_list(args.shots, "--shots") if args.shots else (),
                     seeds=_int_list(args.seeds, "--seeds"), epochs=args.epochs, backbone=args.backbone,
                     exact=not args.fast, teacher=args.teacher, class_position=args.class_position,
                     descriptions=_descriptions(args), gpus_per_run=args.gpus_per_run,
                     cpus_per_run=args.cpus_per_run)
    report = run_sweep(spec, address=args.address, on_line=lambda line: print(line, flush=True))
    print(f"{len(report.finished)} finished, {len(report.skipped)} skipped, {len(report.failed)} failed "
          f"in {report.wall_s:.1f}s", file=sys.stderr)
    for o in report.failed:
        print(f"failed: {o.name}: {o.error}", file=sys.stderr)
    return min(len(report.failed), 100)  # the exit status is the number of failed runs


def cmd_evaluate(args) -> int:
    from .data import LabelledImages
    from .evaluate import evaluate_features
    from .features import encode_images
    from .losses import LossWeights
    from .prompt_bank import build_prompt_bank
    from .teacher import build_teacher
    from .workflow import zero_shot_model

    ckpt = _checkpoint(args)
    setup = _setup(args, ckpt)
    backbone = _backbone(args, ckpt)
    class_names, records = _load_data(args, setup.class_names, args.split)
    if not same_classes(class_names, setup.class_names):
        raise CLIError(f"the data's classes {class_names} do not match {setup.class_names}")
    model = ckpt.build_model(backbone, setup.class_names) if ckpt else zero_shot_model(backbone, setup)
    weights = LossWeights(
        args.l1 if args.l1 is not None else setup.loss_weights.l1,
        args.kl if args.kl is not None else setup.loss_weights.kl,
    )
    mode = args.teacher or (ckpt.teacher_mode if ckpt else "mean")
    data = LabelledImages.from_records(records, setup.class_names)
    feats = encode_images(model, data.images)
    if ckpt is not None and not args.teacher and not args.descriptions and "teacher.features" in ckpt.tensors \
            and setup.class_names == ckpt.class_names:
        teacher_text = ckpt.tensors["teacher.features"].to(backbone.device)  # exactly the training teacher
    else:
        bank = build_prompt_bank(backbone, setup.class_names, setup.templates, setup.descriptions)
        teacher_text = build_teacher(bank, mode).features()
    ev = evaluate_features(model, feats, data.labels, teacher_text, weights)
    trust = _trust_metrics(model, feats, data.labels, ckpt, setup.class_names, args.coverage)
    if args.json:
        _print_json({"accuracy": ev.accuracy, "per_class": ev.per_class, "confusion_matrix": ev.confusion_matrix,
                     "loss": ev.loss, **trust})
    else:
        print(f"accuracy {ev.accuracy:.4f} on {ev.n} images")
        for name, acc in ev.per_class.items():
            print(f"  {'-' if acc is None else f'{acc:.4f}'}  {name}")
        print("loss " + ", ".join(f"{k} {v:.4f}" for k, v in ev.loss.items()))
        print("calibration " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in trust.items()))
    return 0


def _trust_metrics(model, feats, labels, ckpt, class_names, coverage) -> dict:
    """ECE of the shown probabilities; set coverage and mean set size for a calibrated checkpoint."""
    import torch

    from .calibration import evaluation_metrics
    from .predictor import calibration_for

    with torch.no_grad():
        logits = model(image_features=feats).logits
    return evaluation_metrics(logits, labels, calibration_for(ckpt, class_names, model.backbone.spec)[0], coverage)


def cmd_import_dassl(args) -> int:
    from .checkpoint import import_dassl, write_checkpoint

    check_out_path(args.out, args.overwrite)
    if not Path(args.file).is_file():
        raise CLIError(f"{args.file}: no such file (import-dassl reads one .pth.tar file)")
    ckpt = import_dassl(args.file, args.preset, args.method, args.backbone, class_position=args.class_position)
    print(str(write_checkpoint(ckpt, args.out)))
    return 0


def cmd_import_descriptions(args) -> int:
    from .descriptions import validate_descriptions
    from .reference_prompts import import_reference_descriptions, summary

    bank, unmatched = import_reference_descriptions(args.file, args.preset, args.n_prompts)
    validate_descriptions(bank, source=Path(args.file).name)  # the result must load as a descriptions file
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(bank, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if unmatched:
        print(f"warning: {len(unmatched)} key(s) match no class and were left out: {', '.join(unmatched)}",
              file=sys.stderr)
    print(f"{out} ({summary(bank)})")
    return 0


def cmd_push(args) -> int:
    from .checkpoint import read_folder
    from .hub import push_folder

    read_folder(args.checkpoint)  # refuse to publish something that would not load
    print(push_folder(args.checkpoint, args.repo, token=args.token or os.environ.get("HF_TOKEN"), private=not args.public))
    return 0


def cmd_publish(args) -> int:
    from .publish import publish
    from .registry import REGISTRY_PATH

    result = publish(args.runs, args.org, repo=args.repo, public=args.public, dry_run=args.dry_run,
                     token=args.token or os.environ.get("HF_TOKEN"), registry_path=args.registry or REGISTRY_PATH)
    where = "dry run, nothing uploaded" if args.dry_run else result.url
    print(f"{len(result.runs)} run(s) -> {result.repo_id} ({where}); registry: {result.registry}")
    return 0


def cmd_aggregate(args) -> int:
    from .results import aggregate, render_markdown

    result = aggregate(args.runs)
    if not result["groups"]:
        raise CLIError(f"no trained checkpoints with metrics under {args.runs}")
    if args.json:
        _print_json(result)
    else:
        sys.stdout.write(render_markdown(result))
    return 0


def cmd_write_backbone(args) -> int:
    from .localdir import write_random_biomedclip, write_tiny_backbone

    spec = write_tiny_backbone(args.out) if args.kind == "tiny" else write_random_biomedclip(args.out, args.seed)
    print(spec)
    return 0


def cmd_rank_banks(args) -> int:
    from .bank_ranking import rank_banks_into_manifest

    section = rank_banks_into_manifest(_backbone(args), args.preset or None, args.manifest)
    n = sum(len(r["order"]) for b in section["banks"].values() for r in b["classes"].values())
    print(f"ranked {n} sentences of {len(section['banks'])} bank(s) with {section['backbone']}")
    return 0


# ------------------------------------------------------------------------------------- parser

def _coverage_flag(sp) -> None:
    from .calibration import COVERAGES, DEFAULT_COVERAGE

    sp.add_argument("--coverage", type=float, choices=COVERAGES, default=DEFAULT_COVERAGE,
                    help="coverage of the conformal prediction sets of a calibrated checkpoint")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m dpt_core", description="Biomed-DPT prompt tuning for BiomedCLIP")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress of the library")
    sub = p.add_subparsers(dest="command", required=True)

    def class_position(sp, default="end"):
        sp.add_argument("--class-position", choices=["end", "middle"], default=default,
                        help="class word-piece at the end of the prompt, or the reference's 'middle' "
                             f"(default {default})")

    def common(sp, preset_required=False):
        sp.add_argument("--backbone", help="hf-hub:ORG/REPO, local-dir:PATH or tiny (default: $DPT_BACKBONE or BiomedCLIP)")
        sp.add_argument("--preset", required=preset_required, help="dataset preset, e.g. btmri")
        sp.add_argument("--descriptions", help="JSON {class: [sentences]} replacing the bank for those classes")
        sp.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")

    sp = sub.add_parser("predict", help="classify images")
    sp.add_argument("images", nargs="+")
    common(sp)
    sp.add_argument("--classes-file", help="one class name per line")
    sp.add_argument("--checkpoint", help="folder, hf-hub:ORG/REPO[/SUB][@REV] or .pth.tar")
    sp.add_argument("--top", type=int, default=10, help="prompts listed under contributions")
    _coverage_flag(sp)
    sp.add_argument("--json", action="store_true")
    class_position(sp)  # for the checkpoint-less prompt; a checkpoint records its own
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("train", help="learn the prompt context on a few-shot set")
    common(sp)
    sp.add_argument("--classes-file", help=argparse.SUPPRESS)
    sp.add_argument("--data", required=True, help="image folder (one subfolder per class) or dataset root")
    sp.add_argument("--split-file", help="BiomedCoOp split_<NAME>.json")
    sp.add_argument("--shots", type=int, required=True)
    sp.add_argument("--epochs", type=int, required=True)
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--out", required=True, help="a new or empty folder for the checkpoint")
    sp.add_argument("--overwrite", action="store_true", help="replace a previous checkpoint in --out")
    sp.add_argument("--teacher", choices=["mean", "ranked"], default="mean")
    sp.add_argument("--protocol", choices=["few-shot", "base2novel"], default="few-shot")
    sp.add_argument("--exact", action="store_true", help="paper recipe step by step (fresh augmentation each step)")
    sp.add_argument("--views", type=int, default=8, help="fast mode: augmented views cached per image")
    sp.add_argument("--batch-size", type=int, default=4)
    sp.add_argument("--lr", type=float, default=0.0025)
    sp.add_argument("--l1", type=float, help="override lambda_L1")
    sp.add_argument("--kl", type=float, help="override lambda_KL")
    sp.add_argument("--visual-layout", choices=["reference", "insert"], default="reference")
    class_position(sp)
    sp.add_argument("--data-description", help="what the training images are (source, licence, population); "
                                               "goes into the model card")
    sp.add_argument("--holdout", type=float, default=None, metavar="F",
                    help="the app's few-shot run: hold out a share F of each class (e.g. 0.25), compare the adapted "
                         "prompt with the zero-shot one on it and store the calibration fitted on it")
    sp.add_argument("--json", action="store_true",
                    help="print {checkpoint, holdout, metrics, calibration} as JSON")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="accuracy, confusion matrix and loss parts")
    common(sp)
    sp.add_argument("--classes-file", help=argparse.SUPPRESS)
    sp.add_argument("--checkpoint")
    sp.add_argument("--data", required=True)
    sp.add_argument("--split-file")
    sp.add_argument("--split", default="test", help="split of the split file (default test)")
    sp.add_argument("--teacher", choices=["mean", "ranked"])
    sp.add_argument("--l1", type=float)
    sp.add_argument("--kl", type=float)
    _coverage_flag(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("import-dassl", help="convert a reference/BiomedCoOp .pth.tar (no pickle executed)")
    sp.add_argument("file")
    sp.add_argument("--preset", required=True)
    sp.add_argument("--method", choices=["biomeddpt", "biomedcoop"], default="biomeddpt")
    sp.add_argument("--class-position", choices=["end", "middle"],
                    help="default: middle for biomeddpt (what the reference's runs used), end for biomedcoop")
    sp.add_argument("--backbone")
    sp.add_argument("--out", required=True, help="a new or empty folder for the checkpoint")
    sp.add_argument("--overwrite", action="store_true", help="replace a previous checkpoint in --out")
    sp.set_defaults(func=cmd_import_dassl)

    sp = sub.add_parser("import-descriptions",
                        help="convert the reference's prompt_templates.py into a descriptions file (parsed, never run)")
    sp.add_argument("file", help="the reference's trainers/prompt_templates.py")
    sp.add_argument("--out", required=True, help="descriptions JSON to write")
    sp.add_argument("--preset", help="keep only this preset's classes")
    sp.add_argument("--n-prompts", type=int, default=50, help="sentences kept per class (the reference's 50)")
    sp.set_defaults(func=cmd_import_descriptions)

    sp = sub.add_parser("push", help="upload a checkpoint folder with its model card")
    sp.add_argument("checkpoint")
    sp.add_argument("--repo", required=True, help="ORG/NAME")
    sp.add_argument("--token", help="default: $HF_TOKEN or the stored login")
    sp.add_argument("--public", action="store_true", help="create the repo public (default private)")
    sp.set_defaults(func=cmd_push)

    sp = sub.add_parser("sweep", help="the paper's runs (datasets x shots x seeds) on Ray, resumable")
    sp.add_argument("--root", required=True, help="folder with BiomedCoOp's dataset folders (BTMRI/, BUSI/, ...)")
    sp.add_argument("--protocol", choices=["few-shot", "base2novel"], default="few-shot")
    sp.add_argument("--datasets", default="all", help="comma-separated presets, or all")
    sp.add_argument("--shots", help="comma-separated K (default 1,2,4,8,16; base2novel 16)")
    sp.add_argument("--seeds", default="1,2,3")
    sp.add_argument("--out", required=True, help="RUNS folder; runs go to RUNS/<protocol>/<preset>/shots_K/seed_S")
    sp.add_argument("--epochs", type=int, help="default: the paper's (100 few-shot, 50 base2novel)")
    sp.add_argument("--backbone", help="hf-hub:ORG/REPO, local-dir:PATH or tiny (default: BiomedCLIP)")
    sp.add_argument("--fast", action="store_true", help="cached-views fast mode instead of the exact recipe")
    sp.add_argument("--teacher", choices=["mean", "ranked"], default="mean")
    class_position(sp)
    sp.add_argument("--descriptions", help="JSON {class: [sentences]}, e.g. from import-descriptions")
    sp.add_argument("--address", help="join this Ray cluster (default: local Ray in this process)")
    sp.add_argument("--gpus-per-run", type=float, default=0.0, help="GPU share per run, may be fractional")
    sp.add_argument("--cpus-per-run", type=int, default=1, help="CPUs (and torch threads) per run")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("publish", help="upload finished runs to one Hub repo and add them to the registry")
    sp.add_argument("runs", help="RUNS folder written by sweep (or train)")
    sp.add_argument("--org", required=True, help="Hub user or organisation")
    sp.add_argument("--repo", default="biomed-dpt-zoo", help="repository name (default biomed-dpt-zoo)")
    sp.add_argument("--public", action="store_true", help="create the repo public (default private)")
    sp.add_argument("--dry-run", action="store_true", help="write the cards and registry entries, upload nothing")
    sp.add_argument("--registry", help="registry file to update (default checkpoints/registry.json)")
    sp.add_argument("--token", help="default: $HF_TOKEN or the stored login")
    sp.set_defaults(func=cmd_publish)

    sp = sub.add_parser("aggregate", help="paper-style tables from a folder of trained checkpoints")
    sp.add_argument("runs")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_aggregate)

    sp = sub.add_parser("write-backbone", help="write a random-weight backbone in open_clip's local layout")
    sp.add_argument("--kind", choices=["tiny", "biomedclip-random"], default="tiny")
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_write_backbone)

    sp = sub.add_parser("rank-banks", help="rank the shipped description banks' sentences into the MANIFEST")
    sp.add_argument("--backbone", help="a backbone with real weights (default: $DPT_BACKBONE or BiomedCLIP)")
    sp.add_argument("--preset", action="append", help="rank only this bank (repeatable; default: all)")
    sp.add_argument("--manifest", help="write here instead of the shipped MANIFEST.json")
    sp.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    sp.set_defaults(func=cmd_rank_banks)
    return p


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes follow the CLI's error contract too: one line ``error: ...``, exit status 1
    (argparse's default is its usage block and status 2). Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .backbone import BackboneError
    from .checkpoint import CheckpointError
    from .data import DataError
    from .descriptions import DescriptionsError
    from .hub import HubError

    try:
        return args.func(args)
    except (CLIError, BackboneError, CheckpointError, DataError, DescriptionsError, HubError, ValueError) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI contract: one line, never a traceback
        log.debug("unexpected error", exc_info=True)  # the trace, for a bug report, at debug level only
        print(f"error: {error_line(exc)} ({type(exc).__name__})", file=sys.stderr)
        return 1
