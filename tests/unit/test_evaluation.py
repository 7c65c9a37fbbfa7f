"""Stage 7: metrics checked against independent NumPy computations, per class, figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.laplace_fixtures import make_fitted_run
from helpers.synthetic_h5 import make_synthetic_h5

from laplace_head.evaluation.evaluate import METHODS, evaluate, markdown_table
from laplace_head.layout import EVAL_FILES
from laplace_head.settings import EvaluationSettings
from laplace_head.util.atomic import read_json


def _exact_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks for ties
    _, inverse, counts = np.unique(sorted_scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks[order] = (ends - (counts - 1) / 2.0)[inverse]
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    return total / p.size


SETTINGS = EvaluationSettings(n_posterior_samples=8, ece_bins=10, prompt_sigma=3.0, n_examples=2)


def _with_classes(source, target, classes):
    """A copy of the split file ``source`` whose ``index/class`` column is ``classes``."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as handle:
        del handle["index/class"]
        handle["index"].create_dataset(
            "class",
            data=np.array(classes, dtype=object),
            dtype=h5py.string_dtype(encoding="utf-8"),
        )
    return target


def _files(folder: Path) -> dict[str, Path]:
    """Stage 7's files in ``folder``, by name (as ``ProjectLayout.eval_files`` gives them)."""
    return {name: folder / file for name, file in EVAL_FILES.items()}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run = make_fitted_run(tmp_path_factory.mktemp("evaluation"))
    # two classes in the test split, to exercise the per-class breakdown
    test_h5 = _with_classes(
        run.test_h5, run.root / "test_two_classes.h5", ["alpha", "alpha", "beta", "beta"]
    )
    out = run.root / "reports" / "eval" / "run_t1"
    metrics = evaluate(run.laplace_dir, test_h5, run.val_h5, _files(out), SETTINGS, run_id="t1")
    return run, test_h5, out, metrics


def test_outputs_written(evaluated):
    _, _, out, metrics = evaluated
    for name in (
        "metrics.json",
        "metrics.csv",
        "metrics.md",
        "reliability.png",
        "uncertainty_examples.png",
    ):
        assert (out / name).is_file(), name
    on_disk = read_json(out / "metrics.json")
    assert set(on_disk["overall"]) == set(METHODS)
    table = pd.read_csv(out / "metrics.csv")
    assert len(table) == 3 * len(METHODS)  # overall + 2 classes
    assert table["scope"].tolist() == [
        scope for scope in ("overall", "class:alpha", "class:beta") for _ in METHODS
    ]
    assert "| overall | laplace |" in (out / "metrics.md").read_text()
    assert "| class:beta | laplace |" in (out / "metrics.md").read_text()


def test_base_and_map_metrics_match_numpy(evaluated):
    run, test_h5, _, metrics = evaluated
    with h5py.File(test_h5, "r") as handle:
        raw = handle["logits_256"][:].astype(np.float64)
        y = handle["gt_mask_256"][:].astype(np.float64)
        inputs = np.stack(
            [
                np.clip(handle["logits_256"][:].astype(np.float32), -20, 20),
                handle["pos_map"][:],
                handle["neg_map"][:],
            ],
            axis=1,
        )
    base = metrics["overall"]["base"]
    p = 1 / (1 + np.exp(-raw))
    nll = np.mean(np.logaddexp(0, raw) - y * raw)
    assert base["nll"] == pytest.approx(nll, rel=1e-9)
    assert base["brier"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-9)
    assert base["ece"] == pytest.approx(_ece(p.ravel(), y.ravel(), 10), rel=1e-6)
    pred, truth = raw > 0, y > 0.5
    iou = [(a & b).sum() / (a | b).sum() for a, b in zip(pred, truth)]
    assert base["iou"] == pytest.approx(np.mean(iou), rel=1e-6)

    with torch.no_grad():
        z = run.head(torch.from_numpy(inputs.astype(np.float32)))[:, 0].double().numpy()
    map_metrics = metrics["overall"]["map"]
    assert map_metrics["nll"] == pytest.approx(np.mean(np.logaddexp(0, z) - y * z), rel=1e-5)
    entropy_rank = -np.abs(z).ravel()  # entropy is monotone in -|z|
    errors = ((z > 0) != (y > 0.5)).ravel()
    assert map_metrics["auroc_entropy"] == pytest.approx(
        _exact_auroc(entropy_rank, errors), abs=2e-3
    )
    assert map_metrics["error_rate"] == pytest.approx(errors.mean())


def test_per_image_iou_and_its_paired_comparison_with_the_base(evaluated):
    """Each image's IoU is the mean over its prompt sets, for the head's (MAP) mask and the
    base segmenter's; the paired record is head minus base over those images."""
    from laplace_head.cache.split_h5 import read_h5_index

    run, test_h5, out, metrics = evaluated
    with h5py.File(test_h5, "r") as handle:
        raw = handle["logits_256"][:].astype(np.float64)
        truth = handle["gt_mask_256"][:] > 0.5
        inputs = np.stack(
            [np.clip(raw, -20, 20), handle["pos_map"][:], handle["neg_map"][:]], axis=1
        ).astype(np.float32)
    with torch.no_grad():
        z = run.head(torch.from_numpy(inputs))[:, 0].numpy()
    iou = lambda pred: [(a & t).sum() / (a | t).sum() for a, t in zip(pred, truth)]  # noqa: E731
    rows = pd.DataFrame(
        {"sample_id": read_h5_index(test_h5)["sample_id"].astype(str),
         "head": iou(z > 0), "base": iou(raw > 0)}
    ).groupby("sample_id").mean()  # fmt: skip
    per_image = metrics["per_image_iou"]
    assert per_image["sample_id"] == list(rows.index) and len(rows) >= 2
    np.testing.assert_allclose(per_image["head"], rows["head"], rtol=1e-6)
    np.testing.assert_allclose(per_image["base"], rows["base"], rtol=1e-6)
    paired = metrics["paired"]["head_vs_base_iou"]
    assert paired["n"] == len(rows)
    assert paired["mean_difference"] == pytest.approx((rows["head"] - rows["base"]).mean())
    assert paired["ci95"][0] <= paired["mean_difference"] <= paired["ci95"][1]
    assert read_json(out / "metrics.json")["paired"] == metrics["paired"]
    assert "Head IoU minus base IoU per image" in (out / "metrics.md").read_text()


def test_row_calibration_gives_each_rows_nll_and_the_ece_of_any_set_of_rows() -> None:
    """A row's bins give that row's ECE, the summed bins of any rows their pooled ECE (as the
    NumPy reference computes it), and the NLL is the row's mean pixel NLL."""
    from laplace_head.evaluation.calibration import expected_calibration_error, row_calibration

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 8, 9, generator=generator, dtype=torch.float64) * 3
    target = (torch.rand(3, 8, 9, generator=generator) < 0.4).float()
    nll, bins = row_calibration(logits, target, 10)
    z, y = logits.numpy().reshape(3, -1), target.numpy().reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(nll, np.mean(np.logaddexp(0, z) - y * z, axis=1), rtol=1e-12)
    p = 1 / (1 + np.exp(-z))
    assert bins.shape == (3, 3, 10) and bins[:, 0].sum() == z.size
    for row in range(3):
        assert expected_calibration_error(bins[row]) == pytest.approx(_ece(p[row], y[row], 10))
    pooled = expected_calibration_error(bins[[0, 2]].sum(0))
    assert pooled == pytest.approx(_ece(p[[0, 2]].ravel(), y[[0, 2]].ravel(), 10))


def test_calibration_comparisons_resample_images_not_rows() -> None:
    """NLL: each image's mean over its rows, baseline minus Laplace; ECE: the whole split's
    difference, its CI from resampled images. Equal predictions give zeros everywhere."""
    from laplace_head.evaluation.evaluate import calibration_comparisons, calibration_key

    def bins(count, sum_p, sum_y):
        return np.array([[count, 0.0], [sum_p, 0.0], [sum_y, 0.0]])

    # Image a has two rows, image b one; the Laplace rows are calibrated (ECE 0).
    sample_ids = ["a", "a", "b"]
    laplace = (
        [np.array([0.5, 0.3]), np.array([0.2])],
        [np.stack([bins(4, 2, 2)] * 2), bins(4, 1, 1)[None]],
    )
    baseline = (
        [np.array([0.9, 0.5]), np.array([0.2])],
        [np.stack([bins(4, 3, 2)] * 2), bins(4, 1, 1)[None]],
    )
    out = calibration_comparisons(
        sample_ids, {"laplace": laplace, "map": baseline, "map_temperature_scaled": laplace},
        n_bootstrap=500, seed=0,
    )  # fmt: skip
    nll = out[calibration_key("nll", "map")]
    assert nll["n"] == 2 and nll["mean_difference"] == pytest.approx((0.3 + 0.0) / 2)
    assert (nll["n_better"], nll["n_worse"]) == (1, 0)
    ece = out[calibration_key("ece", "map")]
    assert ece["mean_difference"] == pytest.approx(2 / 12)  # |8 - 6| / 12 pixels, minus 0
    # Resampling images: image b alone gives 0, image a alone 2 / 8: the CI spans them.
    assert ece["ci95"][0] >= 0.0 and ece["ci95"][1] <= 2 / 8 + 1e-12
    assert ece["ci95"][1] > ece["ci95"][0]
    for metric in ("nll", "ece"):
        same = out[calibration_key(metric, "map_temperature_scaled")]
        assert same["mean_difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
    assert calibration_comparisons([], {}, 10, 0) == {}


def test_the_posterior_calibration_is_compared_with_each_baseline_per_image(evaluated):
    """Stage 7's paired NLL / ECE records agree with the overall table (the fixture's images
    have equally many prompt sets, so the mean of per-image NLLs is the pixel mean) and are
    written under the table."""
    from laplace_head.evaluation.evaluate import CALIBRATION_BASELINES, calibration_key

    _, _, out, metrics = evaluated
    overall, paired = metrics["overall"], metrics["paired"]
    laplace = overall["laplace"]
    for baseline in CALIBRATION_BASELINES:
        nll = paired[calibration_key("nll", baseline)]
        assert nll["n"] == len(metrics["per_image_iou"]["sample_id"]) >= 2
        expected = overall[baseline]["nll"] - laplace["nll"]
        assert nll["mean_difference"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
        ece = paired[calibration_key("ece", baseline)]
        assert ece["mean_difference"] == pytest.approx(
            overall[baseline]["ece"] - laplace["ece"], rel=1e-6, abs=1e-12
        )
        assert ece["ci95"][0] <= ece["ci95"][1]
    text = (out / "metrics.md").read_text()
    assert "NLL of map minus Laplace" in text and "ECE of map_temperature_scaled minus" in text


def test_decision_metrics_shared_and_laplace_has_bald(evaluated):
    _, _, _, metrics = evaluated
    overall = metrics["overall"]
    for method in ("map_temperature_scaled", "laplace"):
        assert overall[method]["iou"] == pytest.approx(overall["map"]["iou"])
        assert overall[method]["dice"] == pytest.approx(overall["map"]["dice"])
    assert overall["laplace"]["auroc_bald"] is not None
    assert "auroc_bald" not in overall["map"]
    assert metrics["temperature_scaling"]["temperature"] > 1  # the fixture head is overconfident
    assert metrics["ece_binning"].startswith("10 equal-width bins")


def test_per_class_breakdown_sums_to_overall(evaluated):
    _, _, _, metrics = evaluated
    assert set(metrics["per_class"]) == {"alpha", "beta"}
    for method in METHODS:
        parts = [metrics["per_class"][c][method] for c in ("alpha", "beta")]
        assert sum(p["n_rows"] for p in parts) == metrics["overall"][method]["n_rows"] == 4
        pooled = sum(p["nll"] * p["n_pixels"] for p in parts) / sum(p["n_pixels"] for p in parts)
        assert pooled == pytest.approx(metrics["overall"][method]["nll"], rel=1e-9)


def test_empty_test_split(evaluated, tmp_path):
    run = evaluated[0]
    empty = make_synthetic_h5(tmp_path / "test.h5", 0, size=32, split="test")
    settings = EvaluationSettings(n_posterior_samples=4)
    metrics = evaluate(run.laplace_dir, empty, run.val_h5, _files(tmp_path / "out"), settings)
    assert metrics["n_rows"] == 0
    assert all(v is None for v in metrics["overall"].values())
    assert (tmp_path / "out" / "reliability.png").is_file()
    assert (tmp_path / "out" / "uncertainty_examples.png").is_file()


def test_example_panels_suggest_the_region_rule_away_from_the_given_clicks(
    evaluated, tmp_path, monkeypatch
):
    """The panels' next clicks come from the bald_region rule (stage 8's region rule) on the
    quadrature maps the panel shows: the first at the centre of an uncertain region
    (0.25 <= p <= 0.75) when there is one, the rest at least 2 sigma apart, none on a given
    click, each with the likelier label."""
    import laplace_head.evaluation.evaluate as stage7
    import laplace_head.evaluation.plots as plots
    import laplace_head.interactive.predictor as predictor
    from laplace_head.interactive.clicks import REGION_ERROR_LEVEL, predicted_error

    run, test_h5, _, _ = evaluated
    captured, calls = [], []
    monkeypatch.setattr(plots, "plot_uncertainty_examples", lambda ex, path: captured.extend(ex))

    def spy(state, policy, *args, **kwargs):
        calls.append((policy, state.excluded.copy(), state.predictive_probability, state.bald))
        return suggest(state, policy, *args, **kwargs)

    suggest = predictor.suggest
    monkeypatch.setattr(predictor, "suggest", spy)
    assert stage7.suggest_for_inputs is predictor.suggest_for_inputs
    evaluate(run.laplace_dir, test_h5, run.val_h5, _files(tmp_path / "out"), SETTINGS)
    assert captured and len(calls) == len(captured)
    sigma = SETTINGS.prompt_sigma
    for example, (policy, excluded, probability, bald) in zip(captured, calls):
        assert example["click_rule"] == policy == "bald_region"
        prompts = example["prompts"]
        assert 1 <= len(prompts) <= 5 and [p.rank for p in prompts] == list(range(len(prompts)))
        given = (example["pos_map"] > 0.5) | (example["neg_map"] > 0.5)
        assert given.any() and np.array_equal(excluded, given)
        assert np.array_equal(probability, example["probability"])
        assert np.array_equal(bald, example["bald"])  # the BALD the panel shows
        cells = [(p.row, p.col) for p in prompts]
        assert cells == [(int(p.y), int(p.x)) for p in prompts]  # the panel's grid pixels
        assert not any(given[cell] for cell in cells)
        for i, a in enumerate(cells):
            assert all(np.hypot(a[0] - b[0], a[1] - b[1]) >= 2 * sigma for b in cells[:i])
        uncertain = (predicted_error(example["probability"]) >= REGION_ERROR_LEVEL) & ~given
        if uncertain.any():  # (the fixture's head is mostly confident: often no region)
            assert uncertain[cells[0]]
        for prompt, cell in zip(prompts, cells):
            p = float(example["probability"][cell])
            assert prompt.predictive_probability == pytest.approx(p)
            assert prompt.label == (1 if p > 0.5 else 0)


def test_markdown_table_formats_missing_values():
    frame = pd.DataFrame([{"scope": "overall", "method": "map", "nll": 0.123456, "auroc": None}])
    text = markdown_table(frame)
    assert "| overall | map | 0.1235 | - |" in text


@pytest.mark.parametrize("name", ["overall", "class:alpha"])
def test_class_names_never_collide_with_the_overall_scope(evaluated, tmp_path, name):
    """A class called ``overall`` (or shaped like a class row) is one class among others: the
    overall metrics, the overall rows of metrics.csv/md and the other class are unchanged."""
    run, _, out, reference = evaluated
    test_h5 = _with_classes(run.test_h5, tmp_path / "test.h5", ["alpha", "alpha", name, name])
    metrics = evaluate(run.laplace_dir, test_h5, run.val_h5, _files(tmp_path / "out"), SETTINGS)
    assert metrics["classes"] == sorted(["alpha", name])
    assert set(metrics["per_class"]) == {"alpha", name}
    for method in METHODS:
        got, expected = metrics["overall"][method], reference["overall"][method]
        assert got["n_rows"] == 4, (method, got["n_rows"])
        assert got == pytest.approx(expected, rel=1e-12), method
        assert metrics["per_class"][name][method] == pytest.approx(
            reference["per_class"]["beta"][method], rel=1e-12
        )
        assert metrics["per_class"]["alpha"][method] == pytest.approx(
            reference["per_class"]["alpha"][method], rel=1e-12
        )
    assert metrics["reliability"] == reference["reliability"]

    table = pd.read_csv(tmp_path / "out" / "metrics.csv", keep_default_na=False)
    expected_table = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    assert len(table) == 3 * len(METHODS)
    assert table["scope"].tolist().count("overall") == len(METHODS)
    overall_rows = table[table["scope"] == "overall"].reset_index(drop=True)
    expected_rows = expected_table[expected_table["scope"] == "overall"].reset_index(drop=True)
    pd.testing.assert_frame_equal(overall_rows, expected_rows, rtol=1e-9)
    assert (table["scope"] == f"class:{name}").sum() == len(METHODS)
    markdown = (tmp_path / "out" / "metrics.md").read_text()
    assert markdown.count("| overall |") == len(METHODS)
    assert markdown.count(f"| class:{name} |") == len(METHODS)


def test_markdown_table_keeps_one_row_per_line_for_any_class_name():
    frame = pd.DataFrame([{"scope": "class:a|b\nc", "method": "map", "nll": 0.5}])
    lines = markdown_table(frame).splitlines()
    assert len(lines) == 3
    assert lines[2] == "| class:a\\|b c | map | 0.5000 |"


def test_example_panels_use_the_configured_rule_settings(evaluated, tmp_path, monkeypatch):
    """The panels' suggestions read the run's active_prompting rule settings (e.g. real_dev's
    region level 0.15), as stage 8 and the annotator do; without them, the schema's."""
    from dataclasses import replace

    import laplace_head.evaluation.plots as plots
    import laplace_head.interactive.predictor as predictor
    from laplace_head.interactive.clicks import REGION_ERROR_LEVEL

    run, test_h5, _, _ = evaluated
    monkeypatch.setattr(plots, "plot_uncertainty_examples", lambda ex, path: None)
    levels = []
    suggest = predictor.suggest

    def spy(state, *args, **kwargs):
        levels.append(state.settings.region_error_level)
        return suggest(state, *args, **kwargs)

    monkeypatch.setattr(predictor, "suggest", spy)
    evaluate(run.laplace_dir, test_h5, run.val_h5, _files(tmp_path / "default"), SETTINGS)
    assert levels and set(levels) == {REGION_ERROR_LEVEL}
    levels.clear()
    configured = replace(SETTINGS, policy_settings={"region_error_level": 0.15})
    evaluate(run.laplace_dir, test_h5, run.val_h5, _files(tmp_path / "set"), configured)
    assert levels and set(levels) == {0.15}
