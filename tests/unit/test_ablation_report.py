"""The ablation summary: per-variant rows, the choice on val only, the tables and the figure."""

from __future__ import annotations

import json

import pytest

from laplace_head.evaluation.ablation import (
    choose,
    head_comparison,
    markdown,
    table_rows,
    variant_row,
    write_ablation,
)
from laplace_head.layout import ProjectLayout


def _clicks(aucs: dict[str, float], gains: dict[str, float]) -> dict:
    report = {"overall": {}, "paired": {}}
    for policy, auc in aucs.items():
        report["overall"][policy] = {"head": {"auc": auc, "miou": [auc - 0.1, auc, auc + 0.1]}}
        if policy in gains:
            report["paired"][f"{policy}_vs_random"] = {
                "n": 10,
                "mean_difference": gains[policy],
                "ci95": [gains[policy] - 0.02, gains[policy] + 0.02],
                "n_better": 6,
                "n_worse": 4,
            }
    return report


def _eval(nll: float, ece: float, auroc: float) -> dict:
    return {
        "overall": {
            "laplace": {"nll": nll, "ece": ece, "auroc_bald": auroc, "auroc_entropy": 0.8},
            "map": {"nll": 0.31, "ece": 0.066},
            "map_temperature_scaled": {"nll": 0.305, "ece": 0.064},
        }
    }


META = {"posterior": {"target_layer": "all", "approx": "kron", "tuning": "val_nll"}}
AUCS = {"oracle": 0.6, "random": 0.45, "bald": 0.5, "bald_region": 0.48}


def test_calibration_goal_needs_every_condition():
    met = variant_row("a", META, _eval(0.30, 0.06, 0.81), {})
    assert met["calibration_goal_met"] is True
    assert met["test_bald_auroc"] == 0.81 and met["test_nll_temp_scaled"] == 0.305
    assert met["test_ece_temp_scaled"] == 0.064
    # NLL above MAP (0.31) / between temperature scaling (0.305) and MAP; ECE above MAP (0.066)
    # / between temperature scaling (0.064) and MAP; AUROC below 0.80
    for nll, ece, auroc in (
        (0.312, 0.06, 0.81),
        (0.307, 0.06, 0.81),
        (0.30, 0.067, 0.81),
        (0.30, 0.065, 0.81),
        (0.30, 0.06, 0.79),
    ):
        assert variant_row("a", META, _eval(nll, ece, auroc), {})["calibration_goal_met"] is False


def test_the_choice_is_made_on_val_and_reported_on_test():
    rows = [
        variant_row(
            "v1",
            META,
            _eval(0.3, 0.06, 0.7),
            {
                "val": _clicks(AUCS, {"bald": 0.01, "bald_region": 0.05, "oracle": 0.2}),
                "test": _clicks(AUCS, {"bald": 0.09, "bald_region": 0.04, "oracle": 0.2}),
            },
        ),
        variant_row(
            "v2",
            META,
            _eval(0.3, 0.06, 0.7),
            {
                "val": _clicks(AUCS, {"bald": 0.02, "bald_region": 0.03}),
                "test": _clicks(AUCS, {"bald": 0.2, "bald_region": 0.2}),
            },
        ),
    ]
    choice = choose(rows)
    # the oracle's gain is not a BALD rule; test's larger gains do not influence the choice
    assert (choice["variant"], choice["policy"]) == ("v1", "bald_region")
    assert choice["val_vs_random"] == 0.05
    assert choice["test_vs_random"] == 0.04
    assert choice["click_goal_met"] is True  # >= 0.03 and CI [0.02, 0.06] above 0
    assert choice["test_oracle_gap_closed"] == pytest.approx((0.48 - 0.45) / (0.6 - 0.45))
    assert choose([variant_row("v3", META, {}, {"test": _clicks(AUCS, {"bald": 0.1})})]) is None


def test_write_ablation_writes_every_file(tmp_path):
    layout = ProjectLayout(tmp_path, "r1")
    variants = {}
    for name in ("v1", "v2"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps({**META, "val_bald_error_auroc": 0.7}))
        (folder / "eval.json").write_text(json.dumps(_eval(0.3, 0.06, 0.7)))
        clicks = {}
        for split in ("val", "test"):
            path = folder / f"{split}.json"
            path.write_text(json.dumps(_clicks(AUCS, {"bald": 0.01})))
            clicks[split] = path
        variants[name] = {"meta": folder / "meta.json", "eval": folder / "eval.json",
                          "clicks": clicks}  # fmt: skip
    out = {name: layout.ablation_file(name) for name in ("metrics", "table", "markdown", "figure")}
    layout.ablation_dir.mkdir(parents=True)
    settings = {"splits": ["val", "test"], "policies": list(AUCS), "max_clicks": 3}
    summary = write_ablation(variants, out, {**settings, "n_bootstrap": 200, "seed": 0})
    assert summary["choice"]["variant"] == "v1"  # ties keep the first
    text = out["markdown"].read_text()
    assert "| v2 | bald_region |" in text and "Chosen on val" in text
    assert out["figure"].stat().st_size > 10_000
    assert json.loads(out["metrics"].read_text())["variants"][1]["variant"] == "v2"


def test_variant_paths_live_beside_the_run():
    run = ProjectLayout("/p", "r1")
    variant = run.for_posterior("all_kron")
    assert variant.laplace_dir == run.laplace_dir / "variants" / "all_kron"
    assert variant.eval_file("metrics").parent == run.ablation_dir / "all_kron" / "eval"
    assert variant.active_prompting_file("curves", "val") == (
        run.ablation_dir / "all_kron" / "active_prompting" / "val" / "curves.png"
    )
    assert variant.with_run("r2").laplace_dir.parts[-3:] == ("run_r2", "variants", "all_kron")
    assert run.best_checkpoint == variant.best_checkpoint  # one trained head for all variants


def _with_twin(report: dict, rule: str, twin: str, gain: float) -> dict:
    report["overall"][twin] = {"head": {"auc": 0.4, "miou": [0.3, 0.4, 0.5]}}
    report["paired"][f"{rule}_vs_twin"] = {
        "twin": twin,
        "n": 10,
        "mean_difference": gain,
        "ci95": [gain - 0.01, gain + 0.01],
        "n_better": 7,
        "n_worse": 3,
    }
    return report


def test_rule_vs_twin_in_the_rows_the_choice_and_the_tables():
    val = _clicks({**AUCS, "entropy": 0.5}, {"bald": 0.02, "bald_region": 0.05, "entropy": 0.01})
    test = _clicks(AUCS, {"bald": 0.04, "bald_region": 0.06})
    test = _with_twin(test, "bald_region", "map_region", 0.02)
    row = variant_row("v1", META, _eval(0.3, 0.06, 0.7), {"val": val, "test": test})
    entry = row["clicks"]["test"]["bald_region"]
    assert (entry["twin"], entry["vs_twin"], entry["vs_twin_ci95"]) == (
        "map_region",
        0.02,
        [0.01, 0.03],
    )
    assert row["clicks"]["test"]["bald"]["twin"] == "map_entropy"
    assert "vs_twin" not in row["clicks"]["test"]["bald"]  # its twin did not run
    assert "twin" not in row["clicks"]["test"]["oracle"]  # no posterior rule
    choice = choose([row])
    assert (choice["policy"], choice["twin"], choice["test_vs_twin"]) == (
        "bald_region",
        "map_region",
        0.02,
    )
    assert choice["twin_goal_met"] is True
    assert choice["gap_goal_met"] is False  # (0.48 - 0.45) / (0.6 - 0.45) = 0.2 < 0.4
    summary = {
        "splits": ["val", "test"],
        "policies": ["oracle", "random", "bald", "bald_region", "map_region"],
        "variants": [row],
        "choice": choice,
    }
    text = markdown(summary)
    assert "+0.020 [+0.010, +0.030] (map_region)" in text
    assert "map_entropy not run" in text  # bald's twin, on both splits
    assert "beating the twin (CI above 0) met" in text
    rows = table_rows(summary)
    [test_row] = [r for r in rows if r["split"] == "test" and r["policy"] == "bald_region"]
    assert (test_row["twin"], test_row["vs_twin"], test_row["vs_twin_ci_low"]) == (
        "map_region",
        0.02,
        0.01,
    )


def test_the_choice_considers_every_posterior_rule_and_says_when_its_twin_is_missing():
    val = _clicks({**AUCS, "entropy": 0.5}, {"bald": 0.02, "entropy": 0.04})
    row = variant_row("v1", META, {}, {"val": val, "test": _clicks(AUCS, {})})
    choice = choose([row])
    assert choice["policy"] == "entropy" and choice["test_vs_twin"] is None
    assert choice["twin_goal_met"] is False
    text = markdown(
        {"splits": ["val"], "policies": ["entropy"], "variants": [row], "choice": choice}
    )
    assert "its twin map_entropy was not run" in text


def test_rows_and_the_choice_carry_the_head_of_their_posterior():
    image_meta = {**META, "head": "image"}
    rows = [
        variant_row("last", META, {}, {"val": _clicks(AUCS, {"bald": 0.01})}),
        variant_row("image/last", image_meta, {}, {"val": _clicks(AUCS, {"bald": 0.05})}),
    ]
    assert [row["head"] for row in rows] == ["no_image", "image"]  # no head recorded: no_image
    choice = choose(rows)
    assert (choice["variant"], choice["head"], choice["policy"]) == ("image/last", "image", "bald")
    text = markdown({"variants": rows, "splits": ["val"], "policies": list(AUCS), "choice": choice})
    assert "| image/last | bald |" in text and "heads x posterior variants" in text


def _iou_eval(head: dict[str, float], base: dict[str, float]) -> dict:
    """A stage-7 record with per-image IoU (and its overall means) for the heads table."""
    ids = sorted(head)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "overall": {
            "laplace": {"iou": mean([head[s] for s in ids])},
            "base": {"iou": mean([base[s] for s in ids])},
        },
        "per_image_iou": {
            "sample_id": ids,
            "head": [head[s] for s in ids],
            "base": [base[s] for s in ids],
        },
        "paired": {"head_vs_base_iou": {"n": len(ids), "mean_difference": 0.0, "ci95": [0, 0],
                                        "n_better": 0, "n_worse": 0}},
    }  # fmt: skip


def test_the_heads_table_pairs_each_head_with_the_seed_head_image_by_image():
    """The image head is paired with the no_image head on the sample ids both scored (an
    image only one head saw is left out); its goal needs both gains with CIs above 0."""
    ids = [f"s{i}" for i in range(12)]
    base = {s: 0.40 for s in ids}
    no_image = {s: 0.42 + 0.01 * (i % 3) for i, s in enumerate(ids)}
    image = {s: no_image[s] + 0.05 for s in ids[:10]}  # +0.05 on the 10 it shares
    image["only_image"] = 0.9
    image_eval = _iou_eval(image, {**base, "only_image": 0.1})
    image_eval["paired"]["head_vs_base_iou"].update(
        n=11, mean_difference=0.07, ci95=[0.06, 0.08], n_better=11
    )
    rows = [
        variant_row("last", META, _iou_eval(no_image, base), {}),
        variant_row("image/last", {**META, "head": "image"}, image_eval, {}),
        variant_row("image/other", {**META, "head": "image"}, _iou_eval(base, base), {}),
    ]
    heads = head_comparison(rows, n_bootstrap=500, seed=0)
    assert [entry["head"] for entry in heads] == ["no_image", "image"]  # first row per head
    assert "vs_seed_head" not in heads[0] and "goal_met" not in heads[0]
    versus = heads[1]["vs_seed_head"]
    assert versus["n"] == 10 and versus["mean_difference"] == pytest.approx(0.05)
    assert versus["ci95"][0] == pytest.approx(0.05) and versus["n_better"] == 10
    assert heads[1]["goal_met"] is True  # +0.07 over base, +0.05 over no_image, CIs above 0
    image_eval["paired"]["head_vs_base_iou"].update(mean_difference=0.04, ci95=[0.02, 0.06])
    rows[1] = variant_row("image/last", {**META, "head": "image"}, image_eval, {})
    assert head_comparison(rows, 500, 0)[1]["goal_met"] is False  # +0.04 over base < 0.05
    text = markdown(
        {"variants": rows, "splits": ["val"], "policies": list(AUCS), "choice": None,
         "heads_iou": head_comparison(rows, 500, 0)}
    )  # fmt: skip
    assert "## Heads: test IoU" in text
    assert "| image | 0.517 | 0.373 | +0.040 [+0.020, +0.060] (11/0 of 11) | +0.050" in text
    single = markdown({"variants": rows[:1], "splits": ["val"], "policies": list(AUCS),
                       "choice": None, "heads_iou": head_comparison(rows[:1], 500, 0)})  # fmt: skip
    assert "## Heads" not in single


def test_the_posteriors_calibration_against_each_baseline_is_tabled_per_variant():
    """Stage 7's per-image NLL / ECE comparisons reach the summary row (left out of the flat
    CSV) and a table of their own, '-' where a variant has none; no table when none has."""
    from laplace_head.evaluation.evaluate import CALIBRATION_PAIRS, calibration_key

    paired = {
        calibration_key(*pair): {"n": 60, "mean_difference": 0.001 * i, "ci95": [-0.002, 0.003]}
        for i, pair in enumerate(CALIBRATION_PAIRS)
    }
    clicks = {"test": _clicks(AUCS, {"bald": 0.01})}
    with_ci = variant_row("v1", META, {**_eval(0.3, 0.06, 0.7), "paired": paired}, clicks)
    without = variant_row("v2", META, _eval(0.3, 0.06, 0.7), {})
    assert with_ci["test_calibration_vs_baselines"] == paired
    summary = {"variants": [with_ci, without], "splits": [], "policies": [], "choice": None}
    text = markdown(summary)
    assert "| v1 | +0.0000 [-0.0020, +0.0030] | +0.0010 [-0.0020, +0.0030] |" in text
    assert "| v2 | - | - | - | - |" in text
    assert "ECE map_temperature_scaled" in text
    rows = table_rows(summary)
    assert rows and all("test_calibration_vs_baselines" not in row for row in rows)
    assert "baseline minus Laplace" not in markdown({**summary, "variants": [without]})


def test_the_clicks_panel_says_why_it_is_empty_for_a_sweep_on_one_split(tmp_path):
    """A val-only sweep (no test clicks) or a test-only run (no val choice) gets a note in
    the figure's clicks panel instead of empty axes; a run with both gets curves, no note."""
    from laplace_head.evaluation.ablation import clicks_panel_note, plot

    both = variant_row("v1", META, {}, {s: _clicks(AUCS, {"bald": 0.01}) for s in ("val", "test")})
    val_only = variant_row("v1", META, {}, {"val": _clicks(AUCS, {"bald": 0.01})})
    test_only = variant_row("v1", META, {}, {"test": _clicks(AUCS, {"bald": 0.01})})
    assert clicks_panel_note({"variants": [both], "splits": ["val", "test"]}) is None
    note = clicks_panel_note({"variants": [val_only], "splits": ["val"]})
    assert note is not None and "clicked on val" in note
    note = clicks_panel_note({"variants": [test_only], "splits": ["test"]})
    assert note is not None and "clicked on test" in note
    out = tmp_path / "ablation.png"
    plot({"variants": [test_only], "splits": ["test"]}, out)
    assert out.stat().st_size > 10_000
