"""Core benchmarks on the random full-size model (BiomedCLIP's exact shape), one run, ratios printed.

    python bench/bench_core.py [--device cpu|cuda] [--epochs 2]

Measures: one image prediction vs a bare ViT forward; prompt encoding of an
8-class preset padded to 256 tokens vs trimmed; Grad-CAM and rollout vs a
forward; fast vs exact training of 4 classes x 8 shots (exact measured on its
first epoch and extrapolated); peak memory.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import full_size_spec, machine, peak_rss_mb, table, timeit, timeit_pair
from PIL import Image


def synthetic_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (256, 256, 3)).astype(np.uint8)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    from dpt_core.backbone import load_backbone
    from dpt_core.data import LabelledImages, eval_transform
    from dpt_core.explain import attention_rollout, gradcam
    from dpt_core.predictor import Predictor
    from dpt_core.text import TextEncoder
    from dpt_core.train import TrainConfig, fit
    from dpt_core.workflow import setup_classes, train_prompts

    t0 = time.perf_counter()
    bb = load_backbone(full_size_spec(), args.device)
    load_s = time.perf_counter() - t0
    img = synthetic_images(1)[0]
    x = eval_transform(bb)(img).unsqueeze(0).to(bb.device)
    rows = []

    # 1. one prediction vs a bare ViT forward
    s = setup_classes("kvasir")  # 8 classes
    pred = Predictor(bb, s.class_names, s.templates, s.descriptions, s.template, s.n_ctx)

    def bare_forward():
        with torch.no_grad():
            bb.clip.visual(x)

    # interleaved, so that a slow spell of this shared machine hits both sides of the ratio
    bare, one = timeit_pair(bare_forward, lambda: pred.predict([img]), repeat=9)
    rows += [("bare ViT forward (1 image)", f"{bare * 1000:.0f} ms", "1.00x"),
             ("prediction incl. preprocessing + contributions", f"{one * 1000:.0f} ms", f"{one / bare:.2f}x")]

    # 2. prompt encoding, 8 classes, padded vs trimmed
    enc = TextEncoder(bb)
    texts = [s.template.format(c) for c in s.class_names]
    padded, trimmed = bb.tokenizer(texts, trim=False).to(bb.device), bb.tokenizer(texts).to(bb.device)
    with torch.no_grad():
        t_pad = timeit(lambda: enc.forward_ids(padded))
        t_trim = timeit(lambda: enc.forward_ids(trimmed))
        diff = (enc.forward_ids(padded) - enc.forward_ids(trimmed)).abs().max().item()
    rows += [(f"encode 8 prompts padded to {padded.ids.shape[1]} tokens", f"{t_pad * 1000:.0f} ms", "1.00x"),
             (f"encode 8 prompts trimmed to {trimmed.ids.shape[1]} tokens", f"{t_trim * 1000:.0f} ms",
              f"{t_pad / t_trim:.1f}x faster (max |diff| {diff:.1e})")]

    # 3. explanations vs a forward
    model = pred.model
    tf = pred.text_features[0]
    t_cam = timeit(lambda: gradcam(model, img, tf, "x"), repeat=3)
    t_roll = timeit(lambda: attention_rollout(model, img), repeat=3)
    rows += [("Grad-CAM (1 image)", f"{t_cam * 1000:.0f} ms", f"{t_cam / bare:.1f}x forward"),
             ("attention rollout (1 image)", f"{t_roll * 1000:.0f} ms", f"{t_roll / bare:.1f}x forward")]

    # 4. training 4 classes x 8 shots: fast vs exact
    s4 = setup_classes("btmri")
    data = LabelledImages(synthetic_images(32, 1), torch.arange(4).repeat_interleave(8), s4.class_names)
    lw = s4.loss_weights
    t = time.perf_counter()
    fast = train_prompts(bb, s4, data, TrainConfig(epochs=args.epochs, views=2, loss_weights=lw))
    fast_total = time.perf_counter() - t
    fast_steps = fast.fit.seconds - fast.fit.feature_seconds
    exact_model = fast.model
    t = time.perf_counter()
    fit(exact_model, data, fast.teacher, TrainConfig(epochs=1, mode="exact", loss_weights=lw))
    exact_epoch = time.perf_counter() - t
    per_epoch_fast = fast_steps / args.epochs
    rows += [("fast: one-off cache, 2 augmented views of 32 images", f"{fast.fit.feature_seconds + (fast_total - fast.fit.seconds):.1f} s", ""),
             ("fast: one epoch (8 steps, text tower only)", f"{per_epoch_fast:.2f} s", "1.00x"),
             ("exact: one epoch (8 steps, image + text)", f"{exact_epoch:.2f} s", f"{exact_epoch / per_epoch_fast:.1f}x"),
             ("100 epochs (paper), fast (2 views)", f"{fast.fit.feature_seconds + 100 * per_epoch_fast:.0f} s", ""),
             ("100 epochs (paper), exact (extrapolated)", f"{100 * exact_epoch:.0f} s",
              f"{100 * exact_epoch / (fast.fit.feature_seconds + 100 * per_epoch_fast):.1f}x")]

    print(f"machine: {machine()}")
    print(f"backbone: random weights, BiomedCLIP shape; load {load_s:.1f} s; device {bb.device}")
    print(table(rows, ("what", "time", "ratio")))
    print(f"peak RSS: {peak_rss_mb():.0f} MB" + (f"; peak CUDA: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
                                                if bb.device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
