"""Few-shot recipes: held-out accuracy and time together.

    python bench/bench_fewshot.py                   # accuracy (tiny) + timing (full-size)
    python bench/bench_fewshot.py --accuracy-only   # tiny backbone only (a few minutes)
    python bench/bench_fewshot.py --timing-only     # full-size random model only

Accuracy: the ``tiny`` backbone on two synthetic 4-class tasks of different difficulty
(colour: blotches of the class's colour; mixture: blotches of two colours whose share is
the class - shape- and texture-only tasks are at chance for tiny's random features under
every recipe, so they cannot rank recipes), 8 training shots and 25 test images per class, seeds 1-6 (the seed draws the images and
seeds the training). The btmri preset gives the class setup (template, teacher bank,
loss weights), as when the Few-shot tab starts from a preset; class i of a task is the
preset's class i. Every recipe trains on the same images and is scored on the same
centre-crop test features.

Timing: the full-size random-weight model of BiomedCLIP's shape (written once to
bench/.cache). (1) The Few-shot tab's job end to end (4 classes x 8 images: encoding,
held-out split, views, training, held-out check, saving), the CPU default against the
previous default, in alternating order over the rounds. (2) One text-tower step, full BERT
against the [CLS]-only last layer, timed alternately. (3) Fast vs exact for the paper's 100 epochs (batch 4,
8 steps an epoch): one fast epoch and one exact epoch timed alternately, plus the
fast mode's one-off view cache; 100 epochs extrapolated from them. Ratios within one run
are the numbers to compare on a shared machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from common import full_size_spec, machine, table, timeit_pair
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TASKS = ("colour", "mixture")
SEEDS = (1, 2, 3, 4, 5, 6)
SHOTS, TEST_PER_CLASS, N_CLASSES = 8, 25, 4
SIZE = 224
PALETTE = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40)]


# --------------------------------------------------------------------------- synthetic tasks

def task_image(task: str, label: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``label``: the class shows only through the task's cue."""
    base = rng.integers(0, 70, (SIZE, SIZE, 3)).astype(np.uint8)
    if task == "colour":  # blotches of the class's colour: any crop shows it
        mask = rng.random((SIZE // 8, SIZE // 8)) < 0.35
        mask = np.kron(mask, np.ones((8, 8), dtype=bool))
        base[mask] = np.clip(np.array(PALETTE[label]) + rng.integers(-25, 25, 3), 0, 255)
        return Image.fromarray(base)
    if task == "mixture":  # blotches of two colours: the class is the share of the first (30/43/57/70 %)
        cells = rng.random((SIZE // 8, SIZE // 8))
        share = (0.3, 0.43, 0.57, 0.7)[label] + rng.uniform(-0.04, 0.04)
        first = np.kron(cells < share, np.ones((8, 8), dtype=bool))
        base[first] = PALETTE[0]
        base[~first] = PALETTE[2]
        return Image.fromarray(np.clip(base.astype(int) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8))
    raise ValueError(task)


def task_set(task: str, per_class: int, seed: int, class_names: list[str]):
    from dpt_core.data import LabelledImages

    rng = np.random.default_rng([TASKS.index(task), seed, per_class])
    images = [task_image(task, c, rng) for c in range(N_CLASSES) for _ in range(per_class)]
    labels = torch.tensor([c for c in range(N_CLASSES) for _ in range(per_class)])
    return LabelledImages(images, labels, class_names)


# --------------------------------------------------------------------------- recipes

@dataclass(frozen=True)
class Recipe:
    name: str
    config: object | None  # TrainConfig; None: the zero-shot prompt


CANDIDATES = "90:1:0.0025,200:3:0.0025,40:3:0.005:8,50:4:0.005:8,30:8:0.005:4,100:8:0.0025:4"


def recipes(candidates: str = CANDIDATES, only: list[str] | None = None) -> list[Recipe]:
    """Zero-shot, the previous and the current CPU default, the paper, and fast-mode candidates.

    ``candidates``: comma-separated ``EPOCHS:VIEWS:LR[:BATCH]`` (fast mode, the centre crop as view 0,
    batch 32 unless given).
    """
    from dpt_core.recipes import cpu_fewshot_config, paper_config
    from dpt_core.train import TrainConfig

    fast = TrainConfig(mode="fast", center_view=True, views=2)
    rows = [
        Recipe("zero-shot", None),
        Recipe("previous CPU default: fast 15 ep, 2 views, batch 4", replace(fast, epochs=15, batch_size=4)),
        Recipe("paper: exact 100 ep, batch 4", paper_config()),
        Recipe("CPU default (dpt_core.recipes)", cpu_fewshot_config()),
    ]
    for spec in filter(None, candidates.split(",")):
        epochs, views, lr, batch = (spec.split(":") + ["32"])[:4]
        rows.append(Recipe(f"fast {epochs} ep, {views} views, batch {batch}, lr {lr}",
                           replace(fast, epochs=int(epochs), views=int(views), batch_size=int(batch), lr=float(lr))))
    return [r for r in rows if not only or any(o in r.name for o in only)]


def accuracy_bench(seeds: tuple[int, ...], candidates: str, only: list[str] | None) -> str:
    from dpt_core.backbone import load_backbone
    from dpt_core.evaluate import evaluate_features
    from dpt_core.features import encode_images
    from dpt_core.workflow import setup_classes, train_prompts, zero_shot_model

    backbone = load_backbone("tiny", "cpu")
    setup = setup_classes("btmri")
    chosen = recipes(candidates, only)
    acc: dict[tuple[str, str], list[float]] = {}
    secs: dict[tuple[str, str], list[float]] = {}
    for task in TASKS:
        for seed in seeds:
            train = task_set(task, SHOTS, seed, setup.class_names)
            test = task_set(task, TEST_PER_CLASS, 100 + seed, setup.class_names)
            zero = zero_shot_model(backbone, setup)
            test_feats = encode_images(zero, test.images)
            train_feats = encode_images(zero, train.images)
            for r in chosen:
                t = time.perf_counter()
                if r.config is None:
                    model = zero
                else:
                    cfg = replace(r.config, seed=seed, loss_weights=setup.loss_weights)
                    out = train_prompts(backbone, setup, train, cfg, train_features=train_feats)
                    model = out.model
                secs.setdefault((task, r.name), []).append(time.perf_counter() - t)
                a = evaluate_features(model, test_feats, test.labels, _teacher_of(backbone, setup),
                                      setup.loss_weights).accuracy
                acc.setdefault((task, r.name), []).append(a)
                print(f"{task:8s} seed {seed}  {r.name:55s} {a:.3f}  {secs[(task, r.name)][-1]:.1f} s", flush=True)
    rows = []
    for task in TASKS:
        paper = statistics.mean(acc.get((task, "paper: exact 100 ep, batch 4"), [float("nan")]))
        for r in chosen:
            a = acc[(task, r.name)]
            steps = "" if r.config is None else _steps(r.config, SHOTS * N_CLASSES)
            seeds_text = ", ".join(f"{x:.2f}" for x in a)
            rows.append((task, r.name, steps, seeds_text, f"{statistics.mean(a):.3f}",
                         f"{100 * (statistics.mean(a) - paper):+.1f}",
                         f"{statistics.median(secs[(task, r.name)]):.1f} s"))
    return table(rows, ("task", "recipe", "steps", f"accuracy (seeds {', '.join(map(str, seeds))})", "mean",
                        "vs paper (points)", "time tiny (median)"))


_TEACHERS: dict = {}


def _teacher_of(backbone, setup) -> torch.Tensor:
    """The mean teacher's text features (what the evaluation's loss parts are measured against)."""
    from dpt_core.prompt_bank import build_prompt_bank
    from dpt_core.teacher import build_teacher

    if "t" not in _TEACHERS:
        bank = build_prompt_bank(backbone, setup.class_names, setup.templates, setup.descriptions)
        _TEACHERS["t"] = build_teacher(bank, "mean").features()
    return _TEACHERS["t"]


def _steps(config, n: int) -> str:
    from dpt_core.train import steps_per_epoch

    return str(config.epochs * steps_per_epoch(n, config.batch_size))


# --------------------------------------------------------------------------- timing (full-size)

def timing_bench(rounds: int) -> str:
    sys.path.insert(0, str(REPO))
    from dpt_core.backbone import load_backbone
    from dpt_core.fewshot import TrainSettings, run_fewshot
    from dpt_core.prompt_bank import build_prompt_bank
    from dpt_core.train import TrainConfig, fit_epochs, start_fit
    from dpt_core.workflow import prepare_training, setup_classes

    t = time.perf_counter()
    backbone = load_backbone(full_size_spec(), "cpu")
    print(f"full-size backbone loaded in {time.perf_counter() - t:.1f} s", flush=True)
    setup = setup_classes("btmri")
    # The preset's teacher sentences are encoded once per process (the backbone caches them); do it
    # before timing so that neither job pays for it.
    build_prompt_bank(backbone, setup.class_names, setup.templates, setup.descriptions)
    data = task_set("colour", 8, 1, setup.class_names)
    new = TrainSettings.from_setup(setup)
    old = replace(new, epochs=15, views=2, batch_size=4, lr=0.0025)
    jobs: dict[str, list] = {"previous default (fast 15 ep, 2 views, batch 4)": [],
                             f"CPU default ({_describe(new)})": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            order = list(zip(jobs, (old, new), strict=True))
            for name, settings in (order if i % 2 == 0 else order[::-1]):
                result = run_fewshot(backbone, setup, data, settings, Path(tmp) / f"{i}-{len(jobs[name])}")
                jobs[name].append(result.timings)
                print(f"{name}: {result.timings['total_s']:.1f} s "
                      f"(encode {result.timings['encode_s']:.1f}, views {result.timings['views_s']:.1f}, "
                      f"epochs {result.timings['fit_s']:.1f})", flush=True)
    rows = []
    base = statistics.median(x["total_s"] for x in jobs[next(iter(jobs))])
    for name, runs in jobs.items():
        total = statistics.median(x["total_s"] for x in runs)
        parts = " / ".join(f"{statistics.median(x[k] for x in runs):.1f}"
                           for k in ("encode_s", "views_s", "fit_s"))
        rows.append((f"tab job 4x8, {name}", f"{total:.1f} s", f"{total / base:.2f}x",
                     f"encode / views / epochs: {parts} s"))

    # fast vs exact, paper's 100 epochs, 4 classes x 8 images, batch 4
    lw = setup.loss_weights
    fast_cfg = TrainConfig(epochs=100, batch_size=4, views=2, loss_weights=lw)
    exact_cfg = TrainConfig(epochs=100, batch_size=4, mode="exact", loss_weights=lw)
    model, teacher, _ = prepare_training(backbone, setup, data, exact_cfg)
    t = time.perf_counter()
    state = start_fit(model, data, fast_cfg)
    cache_s = time.perf_counter() - t
    fast_epoch, exact_epoch = [], []
    for _ in range(rounds + 1):
        for cfg, out in ((fast_cfg, fast_epoch), (exact_cfg, exact_epoch)):
            st = state if cfg is fast_cfg else start_fit(model, data, cfg)
            if cfg is exact_cfg:
                st.history = [{"total": 0.0}] * 1  # time an epoch at the full lr, as most of the 100 are
            t = time.perf_counter()
            fit_epochs(model, data, teacher, cfg, st, budget_s=0.0)
            out.append(time.perf_counter() - t)
    f_epoch, e_epoch = statistics.median(fast_epoch[1:]), statistics.median(exact_epoch[1:])  # first: warm-up
    fast_100, exact_100 = cache_s + 100 * f_epoch, 100 * e_epoch
    # the fast step is the text tower, forward and backward: plain BertModel vs the [CLS]-only last layer
    encoder = model.text_encoder.with_dropout()
    embeds, mask = model.prompt_learner()

    def step(fn):
        def run():
            x = embeds.detach().requires_grad_(True)
            fn(x).sum().backward()
        return run

    full = step(lambda x: encoder._finish(encoder.bert(inputs_embeds=x, attention_mask=mask), mask))
    t_full, t_cls = timeit_pair(full, step(lambda x: encoder.forward_embeddings(x, mask)), repeat=4 * rounds)
    rows += [(f"text step, {len(embeds)} prompts x {embeds.shape[1]} tokens: full BERT forward + backward",
              f"{1000 * t_full:.0f} ms", "1.00x", "median, timed alternately"),
             ("text step: [CLS]-only last layer (dpt_core.text_tower)", f"{1000 * t_cls:.0f} ms",
              f"{t_full / t_cls:.2f}x faster", "")]
    rows += [("fast: one-off cache, 2 augmented views of 32 images", f"{cache_s:.1f} s", "", ""),
             ("fast: one epoch (8 steps, text tower only)", f"{f_epoch:.2f} s", "1.00x", "median, timed alternately"),
             ("exact: one epoch (8 steps, image + text)", f"{e_epoch:.2f} s", f"{e_epoch / f_epoch:.1f}x", ""),
             ("100 epochs (paper), fast (2 views)", f"{fast_100:.0f} s", "", "cache + 100 epochs"),
             ("100 epochs (paper), exact (extrapolated)", f"{exact_100:.0f} s", f"{exact_100 / fast_100:.1f}x", "")]
    return table(rows, ("what", "time", "ratio", "note"))


def _describe(settings) -> str:
    return f"fast {settings.epochs} ep, {settings.views} views, batch {settings.batch_size}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--accuracy-only", action="store_true", help="tiny backbone accuracy table only")
    group.add_argument("--timing-only", action="store_true", help="full-size timing table only")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--recipes", help="comma-separated substrings of recipe names to run (default: all)")
    ap.add_argument("--candidates", default=CANDIDATES,
                    help="fast-mode candidates as EPOCHS:VIEWS:LR[:BATCH],... (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="timing: alternating rounds per measurement")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (on a loaded machine 1 can be many times faster than 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    if not args.timing_only:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        only = [s.strip() for s in args.recipes.split(",")] if args.recipes else None
        print(accuracy_bench(seeds, args.candidates, only), flush=True)
    if not args.accuracy_only:
        print(timing_bench(args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
