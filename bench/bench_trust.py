"""Cost of the trust features on the random full-size model (BiomedCLIP's exact shape), ratios printed.

    python bench/bench_trust.py [--device cpu|cuda] [--repeat 9]

Measures: one prediction with calibrated probabilities and a conformal set vs
the same prediction without (same prompt; the checkpoints differ only by their
calibration block), also without the image forward (``predict_features``), and
the deletion-faithfulness check vs one Grad-CAM. Pairs are timed alternately.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import full_size_spec, machine, table, timeit_pair
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()

    from dpt_core.backbone import load_backbone
    from dpt_core.calibration import fit_calibration
    from dpt_core.checkpoint import make_config, read_folder, save_checkpoint
    from dpt_core.explain import gradcam
    from dpt_core.faithfulness import explanation_faithfulness
    from dpt_core.model import BiomedDPT
    from dpt_core.predictor import Predictor
    from dpt_core.workflow import setup_classes

    t0 = time.perf_counter()
    bb = load_backbone(full_size_spec(), args.device)
    load_s = time.perf_counter() - t0
    s = setup_classes("kvasir")  # 8 classes
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3)).astype(np.uint8))
    model = BiomedDPT(bb, s.class_names, s.template, s.n_ctx)
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 8, generator=gen) * 10, torch.randint(0, 8, (40,), generator=gen)
    block = fit_calibration(logits, labels, source="bench").to_config()
    with tempfile.TemporaryDirectory() as tmp:
        plain = read_folder(save_checkpoint(Path(tmp) / "plain", model, make_config(model)))
        calibrated = read_folder(save_checkpoint(Path(tmp) / "cal", model, make_config(model, extra={"calibration": block})))
    without = Predictor(bb, s.class_names, s.templates, s.descriptions, checkpoint=plain)
    with_sets = Predictor(bb, s.class_names, s.templates, s.descriptions, checkpoint=calibrated)
    assert without.predict([img])[0].prediction_set is None and with_sets.predict([img])[0].prediction_set is not None
    rows = []

    a, b = timeit_pair(lambda: without.predict([img]), lambda: with_sets.predict([img]), repeat=args.repeat)
    rows += [("prediction (1 image), not calibrated", f"{a * 1000:.1f} ms", "1.00x"),
             ("prediction (1 image), calibrated probs + 90% set", f"{b * 1000:.1f} ms", f"{b / a:.3f}x")]
    feats = without.image_features([img])
    a, b = timeit_pair(lambda: without.predict_features(feats), lambda: with_sets.predict_features(feats),
                       repeat=args.repeat * 5)
    rows += [("predict_features (no image forward), not calibrated", f"{a * 1000:.2f} ms", "1.00x"),
             ("predict_features, calibrated + set", f"{b * 1000:.2f} ms", f"+{(b - a) * 1000:.2f} ms")]

    text = without.text_features
    expl = gradcam(without.model, img, text[0], s.class_names[0])
    a, b = timeit_pair(lambda: gradcam(without.model, img, text[0], s.class_names[0]),
                       lambda: explanation_faithfulness(without.model, img, expl, text, s.class_names),
                       repeat=max(3, args.repeat // 3))
    f = explanation_faithfulness(without.model, img, expl, text, s.class_names)
    rows += [("Grad-CAM (1 image)", f"{a * 1000:.0f} ms", "1.00x"),
             (f"deletion faithfulness ({2 * f.steps} images, one batch)", f"{b * 1000:.0f} ms", f"{b / a:.2f}x Grad-CAM")]

    print(f"machine: {machine()}")
    print(f"backbone: random weights, BiomedCLIP shape; load {load_s:.1f} s; device {bb.device}")
    print(table(rows, ("what", "time", "ratio")))


if __name__ == "__main__":
    main()
