"""The ablation summary: per-variant rows, the choice on val only, the tables and the figure."""

from __future__ import annotations

import json

import pytest

from laplace_head.evaluation.ablation import (
    choose,
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
            "map_temperature_scaled": {"nll": 0.315},
        }
    }


META = {"posterior": {"target_layer": "all", "approx": "kron", "tuning": "val_nll"}}
AUCS = {"oracle": 0.6, "random": 0.45, "bald": 0.5, "bald_region": 0.48}


def test_calibration_goal_needs_every_condition():
    met = variant_row("a", META, _eval(0.30, 0.06, 0.79), {})
    assert met["calibration_goal_met"] is True
    assert met["test_bald_auroc"] == 0.79 and met["test_nll_temp_scaled"] == 0.315
    for nll, ece, auroc in ((0.312, 0.06, 0.79), (0.30, 0.07, 0.79), (0.30, 0.06, 0.74)):
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
    summary = write_ablation(variants, out, settings)
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
