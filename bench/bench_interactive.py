"""Benchmark one interactive click: base decode, prompt maps, head + uncertainty, suggestion.

For each base segmenter - random_walker and the ViT-B shape of SAM with random weights
(``sam_model_registry['vit_b']``, on the CPU unless ``--device cuda``) - it runs the interactive
loop of :class:`laplace_head.interactive.predictor.InteractivePredictor` through a
:class:`~laplace_head.interactive.session.ClickSession` on a few synthetic images:
``set_image`` once (SAM: the image encoder), click 1 = the RITM first click, then ``predict``
and ``suggest(k=1)`` per click with the configuration's click rule, the suggestion labelled by
the ground truth and added as the next click. Per click it records the predictor's own step
timings (``decode``: the base segmenter's predict = SAM prompt encoder + mask decoder +
post-processing to the 256 grid; ``prompt_maps``; ``head``: one head pass for the MAP logits and
their variance; ``uncertainty``: predictive probability, entropy and BALD by quadrature) and the
suggestion's time, and, for SAM, the time of one bare decoder pass (prompt encoder + mask
decoder on the kept embedding, no post-processing). It prints medians over the clicks, the
total per click (decode + prompt maps + head + uncertainty + suggestion) and the ratios to one
SAM decoder pass, measured in this run, and the peak resident memory of one random_walker
prediction with its posterior maps, in a fresh process (Linux). No assertion on time.

The configuration comes from ``--config`` files, merged as Snakemake merges ``--configfile``s
(default: config/config.yaml; ``--config config/config.yaml config/real_dev.yaml`` is what
``make real-dev`` runs): the head (``head.variant``), the posterior variant
(``laplace.target_layer``, ``approx``, ``tuning``, ``output_temperature``), the click rule
(``active_prompting.suggest_policy``) and the prompt maps' sigma
(``prompt_generation.gaussian_sigma``). The head is the tiny fitted head of the test fixtures
(same architecture as the workflow's), fitted with that variant on the fixture's data.

    .venv/bin/python bench/bench_interactive.py [--config FILE [FILE ...]] [--images 2]
        [--clicks 5] [--skip-vit-b]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench_precompute import make_images  # noqa: E402  (bench/ is the script folder)
from helpers.laplace_fixtures import make_fitted_run  # noqa: E402

from laplace_head.bayes.posterior import load_posterior  # noqa: E402
from laplace_head.config.loader import load_configs  # noqa: E402
from laplace_head.dataset.images import resize_mask_nearest  # noqa: E402
from laplace_head.interactive.clicks import first_click, grid_to_image  # noqa: E402
from laplace_head.interactive.predictor import InteractivePredictor  # noqa: E402
from laplace_head.interactive.session import ClickSession  # noqa: E402
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter  # noqa: E402
from laplace_head.segmenters.sam import SamSegmenter  # noqa: E402
from laplace_head.settings import GRID_SIZE  # noqa: E402

STEPS = ("decode", "prompt_maps", "head", "uncertainty", "suggest")


def sam_decoder_pass(segmenter: SamSegmenter, points_xy: np.ndarray, labels: np.ndarray) -> float:
    """Seconds of one bare SAM decode (prompt encoder + mask decoder, no post-processing)."""
    predictor, model = segmenter.predictor, segmenter.model
    coords = predictor.transform.apply_coords(
        points_xy[None].astype(np.float64), segmenter.image_hw
    )
    start = time.perf_counter()
    with torch.inference_mode():
        coords_t = torch.as_tensor(coords, dtype=torch.float32, device=segmenter.device)
        labels_t = torch.as_tensor(labels[None], dtype=torch.int, device=segmenter.device)
        sparse, dense = model.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=None)
        low_res, _ = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        low_res.cpu()
    return time.perf_counter() - start


def run_loop(
    label: str, predictor: InteractivePredictor, images, n_clicks: int, policy: str | None = None
) -> dict:
    """The interactive loop on every image; per-click timings (seconds). Suggestions by
    ``policy`` (None: the predictor's ``suggest_policy``).

    ``click`` is the wall time a click costs in the loop: ``predict`` with its posterior maps
    read (what a page shows) plus ``suggest``. The steps are the predictor's own timings of the
    computation that made each prediction; where that ran inside the previous suggestion (the
    look-ahead candidate that was then clicked, kept in the predictor's memo), it is not paid
    again, so ``click`` can be less than the sum of the steps.
    """
    timings: dict[str, list[float]] = {step: [] for step in (*STEPS, "click")}
    decoder: list[float] = []
    encode: list[float] = []
    session = ClickSession(predictor)
    for image, mask in images:
        start = time.perf_counter()
        session.set_image(image)
        encode.append(time.perf_counter() - start)
        gt_256 = resize_mask_nearest(mask, GRID_SIZE, GRID_SIZE)
        row, col = first_click(gt_256)
        x, y = grid_to_image(row, col, image.shape[:2])
        # warm-up (allocator, lazy init) on another click set: not counted, not in the memo's way
        _ = predictor.predict([[x, y]], [0]).predictive_probability
        session.add_click(x, y, 1)
        for _ in range(n_clicks):
            start = time.perf_counter()
            prediction = session.predict()
            _ = prediction.predictive_probability  # the posterior maps, as a page shows them
            predicted = time.perf_counter() - start
            for step, seconds in prediction.timings_s.items():
                timings[step].append(seconds)
            if isinstance(predictor.segmenter, SamSegmenter):
                decoder.append(
                    sam_decoder_pass(predictor.segmenter, prediction.points_xy, prediction.labels)
                )
            start = time.perf_counter()
            suggestion = session.suggest(k=1, policy=policy)
            suggested = time.perf_counter() - start
            timings["suggest"].append(suggested)
            timings["click"].append(predicted + suggested)
            if not suggestion:
                break
            cell = (suggestion[0].row, suggestion[0].col)
            session.add_click(suggestion[0].x, suggestion[0].y, int(gt_256[cell]))
    medians = {step: float(np.median(values)) for step, values in timings.items()}
    return {
        "model": label,
        "clicks": len(timings["click"]),
        "encode_s": float(np.median(encode)),
        "decoder_s": float(np.median(decoder)) if decoder else None,
        **medians,
    }


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _prediction_peak(laplace_dir: str, sigma: float, policy: str, image, queue) -> None:
    """In a fresh process: the resident memory (MiB) with the predictor loaded and its image
    set, and its peak during one prediction with its posterior maps read (Linux: the peak is
    reset first through ``/proc/self/clear_refs``)."""
    torch.set_num_threads(1)
    predictor = InteractivePredictor(
        RandomWalkerSegmenter(), load_posterior(laplace_dir), sigma, suggest_policy=policy
    )
    predictor.set_image(image)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) := the current RSS
    before = _status_mib("VmRSS")
    height, width = image.shape[:2]
    _ = predictor.predict([[width / 2, height / 2]], [1]).predictive_probability
    queue.put((before, _status_mib("VmHWM")))


def prediction_peak_mib(laplace_dir: Path, sigma: float, policy: str, image) -> tuple:
    """:func:`_prediction_peak` in a spawned process (its own peak, not this one's)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_prediction_peak, args=(str(laplace_dir), sigma, policy, image, queue)
    )
    process.start()
    result = queue.get(timeout=600)
    process.join()
    return result


def print_table(rows: list[dict], sam_decoder_s: float | None) -> None:
    header = (
        f"{'model':<14} {'clicks':>6} {'set_image ms':>12} {'decode ms':>9} {'maps ms':>8} "
        f"{'head ms':>8} {'unc. ms':>8} {'suggest ms':>10} {'click ms':>9} {'SAM dec ms':>10} "
        f"{'click/decode':>12} {'click/SAM dec':>13}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        decoder = row["decoder_s"] if row["decoder_s"] is not None else sam_decoder_s
        total_ratio = f"{row['click'] / decoder:>13.2f}" if decoder else f"{'-':>13}"
        dec = f"{1000 * decoder:>10.1f}" if decoder else f"{'-':>10}"
        print(
            f"{row['model']:<14} {row['clicks']:>6} {1000 * row['encode_s']:>12.1f} "
            f"{1000 * row['decode']:>9.1f} {1000 * row['prompt_maps']:>8.1f} "
            f"{1000 * row['head']:>8.1f} {1000 * row['uncertainty']:>8.1f} "
            f"{1000 * row['suggest']:>10.1f} {1000 * row['click']:>9.1f} {dec} "
            f"{row['click'] / row['decode']:>12.2f} {total_ratio}"
        )
    print(
        "\nmedians per click. click = the wall time of a click in the loop: predict with its "
        "posterior maps + suggest (the total per click); decode, maps, head, unc. = the "
        "predictor's steps for the prediction (decode = the base segmenter's predict, SAM: "
        "prompt encoder + mask decoder + post-processing to 256; a look-ahead candidate that "
        "is then clicked was computed inside the previous suggestion and is not paid again); "
        "SAM dec = one bare prompt-encoder + mask-decoder pass of the ViT-B SAM "
        "(random_walker's row uses the ViT-B figure)."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        nargs="+",
        default=[str(REPO / "config" / "config.yaml")],
        metavar="FILE",
        help="config files, later ones overriding (default: config/config.yaml); the posterior "
        "variant, the click rule (active_prompting.suggest_policy) and the prompt sigma come "
        "from them",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--skip-vit-b", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 keeps timings stable on a shared machine)",
    )
    args = parser.parse_args(argv)
    config = load_configs(args.config, check_paths=False)
    laplace = config["laplace"]
    variant = {
        key: laplace[key] for key in ("target_layer", "approx", "tuning", "output_temperature")
    }
    head = config["head"]["variant"]
    policy = config["active_prompting"]["suggest_policy"]
    sigma = float(config["prompt_generation"]["gaussian_sigma"])
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print(f"config {' + '.join(args.config)}")
    images = make_images(args.images, *args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_interactive_") as tmp:
        laplace_dir = make_fitted_run(Path(tmp), head=head, **variant).laplace_dir
        described = ", ".join(f"{key} {value}" for key, value in {"head": head, **variant}.items())
        print(f"posterior {described}; suggestions by {policy}; prompt sigma {sigma}")
        posterior = load_posterior(laplace_dir)
        walker = InteractivePredictor(
            RandomWalkerSegmenter(), posterior, sigma, suggest_policy=policy
        )
        rows.append(run_loop("random_walker", walker, images, args.clicks))
        before, after = prediction_peak_mib(laplace_dir, sigma, policy, images[0][0])
        peak = (
            f"peak RSS during one prediction with its posterior maps (random_walker, fresh "
            f"process): {after:.0f} MiB, {after - before:.0f} MiB above the loaded predictor's "
            f"{before:.0f} MiB"
        )
        if not args.skip_vit_b:
            from segment_anything import sam_model_registry

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = sam_model_registry["vit_b"](checkpoint=None)
            segmenter = SamSegmenter(model=model, model_type="vit_b", device=args.device)
            head_device = str(segmenter.device)
            sam_posterior = load_posterior(laplace_dir, device=head_device)
            sam = InteractivePredictor(segmenter, sam_posterior, sigma, suggest_policy=policy)
            rows.append(run_loop("sam_vit_b", sam, images, args.clicks))
    sam_decoder = next((r["decoder_s"] for r in rows if r["decoder_s"] is not None), None)
    print()
    print_table(rows, sam_decoder)
    print(peak)


if __name__ == "__main__":
    main()
