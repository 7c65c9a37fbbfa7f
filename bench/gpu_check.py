"""GPU check: stage-3 precompute, head training and per-click latency on one machine, one table.

Three sections, each timed with ``torch.cuda.synchronize`` around the measured work, after a
warm-up, with bounded repeats; the peak GPU memory of each section is reported.

1. **Stage 3** with a ViT-H-shaped SAM (``sam_model_registry["vit_h"]``, random weights;
   ``--model-type`` picks another shape, ``--tiny`` the tiny SAM of the tests) on ``--images``
   synthetic images of ``--size`` pixels with ``--prompt-sets`` prompt sets each
   (``bench/bench_precompute.py``'s inputs: stage 2's sampler, 1-10 positive/negative point
   pairs per set), in fp32 and under bf16 ``torch.autocast``:

   - the whole stage, :func:`laplace_head.cache.precompute.precompute_shard` (image read, one
     image-encoder pass per image, every prompt set of the image decoded by
     ``SamSegmenter.predict_batch``, post-processing, prompt maps, atomic writes), images/s
     (best of ``--repeats``);
   - the image encoder alone (``set_image``), images/s;
   - the decode of one image's prompt sets, three ways: one ``predict`` call per prompt set;
     ``predict_batch`` (the project's batched decode: one prompt-encoder + mask-decoder call per
     group of prompt sets with the same number of points, exact); and one call for all of them
     with shorter sets padded by SAM's "not a point" label -1 (:func:`decode_padded`, written
     here; SAM attends to the padding tokens, so it changes the logits of the padded sets: the
     table gives the largest change).

2. **Head training**: :class:`laplace_head.model.head.NoImageHead` on batches of 256 x 256
   inputs held on the device, samples/s: fp32 and fp16 + GradScaler through the training loop
   (:func:`laplace_head.training.loop.train_one_epoch`, as ``bench/bench_training.py`` times it)
   and bf16 autocast (the loop's step - model, BCE + Dice loss, AdamW - written here, since the
   loop offers fp16 only).

3. **Per click** of the recommended configuration, ``config/real_dev.yaml``'s posterior variant
   (``laplace.target_layer`` / ``approx`` / ``tuning``) and click rule, with
   :class:`~laplace_head.interactive.predictor.InteractivePredictor` over the same SAM (fp32) and
   a posterior fitted on the test fixtures, through ``bench/bench_interactive.py``'s loop: ms per
   step and the ratio to one bare SAM decoder pass. On CUDA the head and uncertainty steps are
   followed by a synchronize so that their GPU time is counted in their own step.

It prints one table and, with ``--json PATH``, writes the same figures as JSON.

    python3 bench/gpu_check.py [--device cuda] [--images 16] [--prompt-sets K] [--clicks 4]
        [--json PATH]
    python3 bench/gpu_check.py --device cpu --tiny        # smoke run on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench_interactive import run_loop  # noqa: E402  (bench/ is the script folder)
from bench_precompute import make_images, make_inputs  # noqa: E402
from bench_training import _throughput as loop_throughput  # noqa: E402
from helpers.laplace_fixtures import make_fitted_run  # noqa: E402
from helpers.synthetic_h5 import make_synthetic_h5  # noqa: E402
from helpers.tiny_sam import build_tiny_sam  # noqa: E402

from laplace_head.bayes.posterior import load_posterior  # noqa: E402
from laplace_head.cache.precompute import precompute_shard  # noqa: E402
from laplace_head.interactive.predictor import InteractivePredictor  # noqa: E402
from laplace_head.model.head import NoImageHead  # noqa: E402
from laplace_head.model.losses import bce_dice_loss  # noqa: E402
from laplace_head.segmenters.base import Prediction  # noqa: E402
from laplace_head.segmenters.sam import SamSegmenter  # noqa: E402
from laplace_head.training.dataset import H5SegmentationDataset  # noqa: E402
from laplace_head.util.devices import resolve_device  # noqa: E402

# The base configuration and the overlay the README recommends for real photographs.
CONFIG_FILES = (REPO / "config" / "config.yaml", REPO / "config" / "real_dev.yaml")
# The click rule used when the configuration names none (active_prompting.suggest_policy).
FALLBACK_POLICY = "bald_lookahead"
PRECISIONS = ("fp32", "bf16")
GIB = 2**30


def config_value(section: str, key: str, default: Any = None) -> Any:
    """``section.key`` of config/config.yaml with config/real_dev.yaml on top (later wins)."""
    value = default
    for path in CONFIG_FILES:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        value = (data.get(section) or {}).get(key, value)
    return value


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for ``precision == "bf16"``, a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of ``fn(*args)`` with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn(*args)
    sync(device)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict) -> Iterator[None]:
    """Store the section's peak allocated GPU memory (GiB) in ``out["peak_gib"]``."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            sync(device)
            out["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        else:
            out["peak_gib"] = None


# --- stage 3 -----------------------------------------------------------------------------------


def decode_padded(
    segmenter: SamSegmenter, prompt_sets: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[Prediction]:
    """All prompt sets of the current image in ONE prompt-encoder + mask-decoder call.

    Shorter sets are padded at the end with points labelled -1 (SAM's "not a point", as
    ``SamPredictor.predict_torch`` accepts). Branch choice (highest predicted IoU) and
    post-processing are ``SamSegmenter``'s, so a batch whose sets all have the same number of
    points gives exactly ``predict``'s result; padded sets differ, because SAM's two-way
    transformer attends to the padding tokens.
    """
    n_max = max(len(points) for points, _ in prompt_sets)
    points = np.zeros((len(prompt_sets), n_max, 2))
    labels = np.full((len(prompt_sets), n_max), -1, dtype=np.int64)
    for index, (set_points, set_labels) in enumerate(prompt_sets):
        points[index, : len(set_points)] = set_points
        labels[index, : len(set_labels)] = set_labels
    return segmenter._decode(points, labels)[0]  # the segmenter's own decode, on padded sets


def _prompt_sets(prompt_json: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(points, labels) of every prompt set of a stage-2 prompt JSON, as stage 3 builds them."""
    record = json.loads(prompt_json.read_text())
    out = []
    for promptset in record["promptsets"]:
        pos, neg = promptset["pos_points"], promptset["neg_points"]
        out.append(
            (np.asarray(pos + neg, dtype=np.float64), np.array([1] * len(pos) + [0] * len(neg)))
        )
    return out


def _per_set(segmenter: SamSegmenter, sets) -> list[Prediction]:
    return [segmenter.predict(points, labels) for points, labels in sets]


def _encode_all(segmenter: SamSegmenter, images) -> None:
    for image in images:
        segmenter.set_image(image)


def decode_rows(
    segmenter: SamSegmenter, device: torch.device, images, paths, repeats: int
) -> dict[str, float]:
    """Median ms per image of the three decodes, and the padded call's largest logit change."""
    times: dict[str, list[float]] = {"per_set": [], "batched": [], "padded": []}
    max_change = 0.0
    for image, path in zip(images, paths):
        segmenter.set_image(image)
        sets = _prompt_sets(path)
        reference = _per_set(segmenter, sets)  # also the warm-up of the three
        segmenter.predict_batch(sets)
        padded = decode_padded(segmenter, sets)
        for (ref, _, _), (pad, _, _) in zip(reference, padded):
            max_change = max(max_change, float(np.max(np.abs(ref - pad))))
        for _ in range(repeats):
            times["per_set"].append(timed(device, _per_set, segmenter, sets)[0])
            times["batched"].append(timed(device, segmenter.predict_batch, sets)[0])
            times["padded"].append(timed(device, decode_padded, segmenter, sets)[0])
    return {
        **{f"decode_{key}_ms": 1000 * statistics.median(values) for key, values in times.items()},
        "padded_max_abs_logit_change": max_change,
    }


def bench_precompute(
    segmenter: SamSegmenter,
    device: torch.device,
    work: Path,
    n_images: int,
    k_sets: int,
    size: tuple[int, int],
    decode_images: int,
    repeats: int,
) -> tuple[dict[str, dict], list[int]]:
    """Stage-3 figures per precision (see the module docstring, section 1), and the sorted
    distinct numbers of points of the prompt sets."""
    sigma = float(config_value("prompt_generation", "gaussian_sigma"))
    paths = make_inputs(work / "inputs", n_images, k_sets, *size)
    images = [image for image, _ in make_images(n_images, *size)]
    results: dict[str, dict] = {}
    for precision in PRECISIONS:
        row: dict[str, Any] = {}
        with peak_memory(device, row), autocast(device, precision):
            # warm-up: allocator, cuDNN/cuBLAS heuristics, lazy initialisation
            warm = work / f"warm_{precision}"
            precompute_shard(paths[:1], warm, segmenter, sigma, warm / "summary.json")
            stage_s = float("inf")
            for repeat in range(repeats):  # fresh output folders: nothing is skipped
                out = work / f"{precision}_{repeat}"
                seconds, summary = timed(
                    device, precompute_shard, paths, out, segmenter, sigma, out / "summary.json"
                )
                # every prompt set computed: a run that decoded nothing would time nothing
                assert summary["done"] == summary["n_promptsets"] == n_images * k_sets, summary
                stage_s = min(stage_s, seconds)
            encode_s = min(timed(device, _encode_all, segmenter, images)[0] for _ in range(repeats))
            decodes = decode_rows(
                segmenter, device, images[:decode_images], paths[:decode_images], repeats
            )
        row.update(
            stage_images_per_s=n_images / stage_s,
            stage_promptsets_per_s=summary["done"] / stage_s,
            encoder_images_per_s=n_images / encode_s,
            **decodes,
            stage_timing_s=summary["timing_s"],
        )
        results[precision] = row
        print(f"  stage 3 {precision}: {row['stage_images_per_s']:.2f} images/s", flush=True)
    point_counts = sorted({len(points) for path in paths for points, _ in _prompt_sets(path)})
    return results, point_counts


# --- head training -----------------------------------------------------------------------------


def _bf16_throughput(batches, n_rows, epochs, device, dice_lambda, lr, weight_decay) -> float:
    """Samples/s of the training loop's step under bf16 autocast (no GradScaler needed)."""
    torch.manual_seed(0)
    model = NoImageHead().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def epoch() -> None:
        for inputs, target in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(inputs)
            loss = bce_dice_loss(logits, target, dice_lambda)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss.item()  # the loop reads the loss at the end of an epoch

    epoch()  # warm-up
    seconds, _ = timed(device, lambda: [epoch() for _ in range(epochs)])
    return n_rows * epochs / seconds


def bench_training(
    device: torch.device, work: Path, batch_sizes: Sequence[int], steps: int, size: int
) -> dict[str, dict]:
    """Head-training samples/s per precision and batch size (module docstring, section 2)."""
    dice_lambda = float(config_value("training", "dice_lambda"))
    lr = float(config_value("training", "lr"))
    weight_decay = float(config_value("training", "weight_decay"))
    rows = max(batch_sizes)
    h5_path = make_synthetic_h5(work / "train.h5", rows, seed=0, size=size)
    dataset = H5SegmentationDataset(h5_path, float(config_value("training", "logit_clip")))
    inputs, target = dataset.get_batch(range(rows))
    inputs, target = inputs.to(device), target.to(device)
    precisions = ["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    results: dict[str, dict] = {p: {} for p in precisions}
    for precision in precisions:
        row = results[precision]
        with peak_memory(device, row):
            for batch in batch_sizes:
                batches = [(inputs[:batch], target[:batch])] * steps
                if precision == "bf16":
                    rate = _bf16_throughput(
                        batches, batch * steps, 1, device, dice_lambda, lr, weight_decay
                    )
                else:
                    rate = loop_throughput(
                        lambda b=batches: b, batch * steps, 1, device, precision == "fp16"
                    )
                row[f"samples_per_s_batch{batch}"] = rate
        print(f"  training {precision}: {row}", flush=True)
    return results


# --- per click ---------------------------------------------------------------------------------


@contextlib.contextmanager
def synced_steps(predictor: InteractivePredictor, device: torch.device) -> Iterator[None]:
    """On CUDA, synchronise at the end of the predictor's head and uncertainty steps.

    The predictor times each step with the host clock; without a synchronize, kernels queued by
    the head and the quadrature would finish inside the next, untimed conversion to numpy.
    """
    if device.type != "cuda":
        yield
        return
    posterior = predictor.posterior
    wrapped = {}
    for name in ("logit_moments", "uncertainty_maps"):
        original = getattr(posterior, name)

        def synced(*args, _original=original, **kwargs):
            result = _original(*args, **kwargs)
            sync(device)
            return result

        wrapped[name] = synced
        setattr(posterior, name, synced)
    try:
        yield
    finally:
        for name in wrapped:
            delattr(posterior, name)


def bench_clicks(
    segmenter: SamSegmenter,
    device: torch.device,
    work: Path,
    n_images: int,
    n_clicks: int,
    size: tuple[int, int],
    policy: str | None,
) -> dict[str, Any]:
    """Per-click step timings of the recommended configuration (module docstring, section 3)."""
    variant = {key: config_value("laplace", key) for key in ("target_layer", "approx", "tuning")}
    policy = policy or config_value("active_prompting", "suggest_policy") or FALLBACK_POLICY
    laplace_dir = make_fitted_run(work, **variant).laplace_dir
    posterior = load_posterior(laplace_dir, device=str(device))
    sigma = float(config_value("prompt_generation", "gaussian_sigma"))
    predictor = InteractivePredictor(segmenter, posterior, sigma)
    images = make_images(n_images, *size)
    row: dict[str, Any] = {**variant, "policy": policy}
    with peak_memory(device, row), synced_steps(predictor, device):
        row.update(run_loop("sam", predictor, images, n_clicks, policy))
    row["total"] = row["click"]  # the wall time of a click: predict + posterior maps + suggest
    row["total_per_decoder_pass"] = row["total"] / row["decoder_s"]
    print(f"  per click: {1000 * row['total']:.1f} ms", flush=True)
    return row


def build_sam(model_type: str, device: torch.device) -> torch.nn.Module:
    """A SAM with random weights (seed 0): the tests' tiny one, or an official shape.

    An official shape is built with its parameters created on ``device`` (initialising ViT-H's
    641 M weights on a GPU takes a moment, on the CPU much longer); where that fails it is built
    on the CPU and moved by the segmenter.
    """
    if model_type == "tiny":
        return build_tiny_sam(seed=0)
    from segment_anything import sam_model_registry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            with device:
                return sam_model_registry[model_type](checkpoint=None)
        except (RuntimeError, TypeError) as exc:
            print(f"  building SAM on {device} failed ({exc}); building it on the CPU")
            return sam_model_registry[model_type](checkpoint=None)


# --- report ------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["name"] = props.name
        env["memory_gib"] = props.total_memory / GIB
    else:
        env["name"] = "CPU"
    return env


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def print_table(report: dict[str, Any]) -> None:
    env, setup = report["environment"], report["setup"]
    memory = f" ({env['memory_gib']:.0f} GiB)" if "memory_gib" in env else ""
    print(
        f"\nGPU check on {env['name']}{memory}: torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}, TF32 matmul {env['tf32_matmul']}, TF32 cuDNN "
        f"{env['tf32_cudnn']}, {env['threads']} CPU threads"
    )
    header = f"{'section / measure':<62} {'fp32':>10} {'bf16':>10} {'fp16':>10}  unit"
    print(header)
    print("-" * len(header))

    def line(label, values, unit, digits=1):
        cells = " ".join(f"{_fmt(values.get(p), digits):>10}" for p in ("fp32", "bf16", "fp16"))
        print(f"{label:<62} {cells}  {unit}")

    pre = report["precompute"]
    print(
        f"stage 3, SAM {setup['sam']}, {setup['images']} images {setup['size']}, "
        f"{setup['prompt_sets']} prompt sets each ({setup['point_counts']} points)"
    )

    def pick(key):
        return {p: pre[p][key] for p in pre}

    line(
        "  whole stage (precompute_shard: read, encode, decode, write)",
        pick("stage_images_per_s"),
        "images/s",
        2,
    )
    line("  whole stage", pick("stage_promptsets_per_s"), "prompt sets/s", 1)
    line("  image encoder alone (set_image)", pick("encoder_images_per_s"), "images/s", 2)
    line("  decode one image's sets: one predict per set", pick("decode_per_set_ms"), "ms/image")
    line(
        "  decode one image's sets: predict_batch (equal-size groups)",
        pick("decode_batched_ms"),
        "ms/image",
    )
    line(
        "  decode one image's sets: one call, padded with label -1",
        pick("decode_padded_ms"),
        "ms/image",
    )
    line(
        "  padded call: largest |logit change| vs per set",
        pick("padded_max_abs_logit_change"),
        "logit",
        3,
    )
    line("  peak GPU memory", pick("peak_gib"), "GiB", 2)

    train = report["training"]
    side = setup["train_size"]
    print(f"head training (NoImageHead, {side}x{side} inputs on the device)")
    for batch in setup["train_batches"]:
        key = f"samples_per_s_batch{batch}"
        line(f"  batch {batch}", {p: train[p][key] for p in train}, "samples/s")
    line("  peak GPU memory", {p: train[p]["peak_gib"] for p in train}, "GiB", 2)

    click = report["clicks"]
    print(
        f"per click, {click['target_layer']} + {click['approx']} posterior ({click['tuning']}), "
        f"rule {click['policy']}, SAM {setup['sam']} fp32, median of {click['clicks']} clicks"
    )
    steps = [
        ("decode (SAM predict: prompt enc. + mask dec. + post-proc.)", "decode"),
        ("prompt maps", "prompt_maps"),
        ("head (MAP logits + GLM variance)", "head"),
        ("uncertainty (quadrature)", "uncertainty"),
        ("suggestion", "suggest"),
        ("total per click (wall: predict + maps + suggestion)", "total"),
        ("one bare SAM decoder pass", "decoder_s"),
    ]
    for label, key in steps:
        line(f"  {label}", {"fp32": 1000 * click[key]}, "ms")
    line("  total / decoder pass", {"fp32": click["total_per_decoder_pass"]}, "x", 2)
    line("  peak GPU memory", {"fp32": click["peak_gib"]}, "GiB", 2)
    print(
        f"\nwall time {report['wall_s']:.0f} s (SAM build {setup['sam_build_s']:.0f} s). Stage "
        "3's whole-stage figure includes PNG reads and fsynced writes. predict_batch is the "
        "project's batched decode (one call per group of prompt sets with the same number of "
        "points: exact); the padded one-call decode is this script's (decode_padded) and changes "
        "the padded sets' logits. Training: fp32 and fp16 (+GradScaler) run the training loop; "
        "bf16 runs the same step written here. The per-click head and uncertainty steps are "
        "synchronised on CUDA."
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["auto", "cuda", "cpu"])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny SAM, small images, few repeats (smoke run)"
    )
    parser.add_argument(
        "--model-type",
        default="vit_h",
        choices=["vit_h", "vit_l", "vit_b"],
        help="shape of the random-weight SAM (ignored with --tiny)",
    )
    parser.add_argument("--images", type=int, help="stage-3 images (default 16; --tiny 2)")
    parser.add_argument(
        "--prompt-sets",
        type=int,
        help="prompt sets per image (default: the config's prompt_generation.num_promptsets_train)",
    )
    parser.add_argument(
        "--decode-images", type=int, default=4, help="images of the decode rows (default 4)"
    )
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="default 1024 1024")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 3; --tiny 1)")
    parser.add_argument("--train-batches", type=int, nargs="+", help="default: the config's and 64")
    parser.add_argument("--train-steps", type=int, help="timed steps per batch size (default 50)")
    parser.add_argument("--click-images", type=int, help="images of the click loop (default 2)")
    parser.add_argument("--clicks", type=int, help="timed clicks per image (default 4; --tiny 1)")
    parser.add_argument(
        "--policy",
        help=f"click rule (default: the config's active_prompting.suggest_policy, else "
        f"{FALLBACK_POLICY})",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The fixture posterior is fitted on a few 32 x 32 rows; its grid-edge and collapse
    # warnings say nothing about the timings.
    logging.getLogger("laplace_head.bayes.fit").setLevel(logging.ERROR)
    tiny = args.tiny
    device = resolve_device(args.device)
    images = args.images or (2 if tiny else 16)
    k_sets = args.prompt_sets or (
        2 if tiny else int(config_value("prompt_generation", "num_promptsets_train"))
    )
    size = tuple(args.size or ((120, 160) if tiny else (1024, 1024)))
    repeats = args.repeats or (1 if tiny else 3)
    batches = args.train_batches or (
        [2] if tiny else [int(config_value("training", "batch_size")), 64]
    )
    steps = args.train_steps or (2 if tiny else 50)
    train_size = 64 if tiny else 256
    click_images = args.click_images or (1 if tiny else 2)
    clicks = args.clicks or (1 if tiny else 4)
    started = time.perf_counter()
    report: dict[str, Any] = {"environment": environment(device)}
    print(f"gpu_check on {report['environment']['name']}, torch {torch.__version__}", flush=True)

    build_start = time.perf_counter()
    label = "tiny" if tiny else args.model_type
    model = build_sam(label, device)
    segmenter = SamSegmenter(model=model, model_type=label, device=str(device))
    report["setup"] = {
        "sam": label,
        "sam_build_s": time.perf_counter() - build_start,
        "images": images,
        "prompt_sets": k_sets,
        "size": f"{size[0]}x{size[1]}",
        "decode_images": min(args.decode_images, images),
        "repeats": repeats,
        "train_batches": batches,
        "train_steps": steps,
        "train_size": train_size,
        "click_images": click_images,
        "clicks_per_image": clicks,
    }
    print(f"  SAM {label} built in {report['setup']['sam_build_s']:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        report["precompute"], report["setup"]["point_counts"] = bench_precompute(
            segmenter,
            device,
            work / "stage3",
            images,
            k_sets,
            size,
            report["setup"]["decode_images"],
            repeats,
        )
        (work / "train").mkdir()
        report["training"] = bench_training(device, work / "train", batches, steps, train_size)
        (work / "clicks").mkdir()
        report["clicks"] = bench_clicks(
            segmenter, device, work / "clicks", click_images, clicks, size, args.policy
        )
    report["wall_s"] = time.perf_counter() - started
    print_table(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return report


if __name__ == "__main__":
    main()
