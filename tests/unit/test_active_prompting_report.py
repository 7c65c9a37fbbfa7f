"""laplace_head.evaluation.active_prompting: mIoU@k, AUC, NoC/NoF, paired tests, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from laplace_head.evaluation.active_prompting import (
    aggregate,
    curve_metrics,
    iou_matrix,
    markdown,
    metrics_rows,
    paired_comparison,
    write_report,
)


def _record(sample_id, cls, policy, head, base):
    return {
        "sample_id": sample_id,
        "class": cls,
        "policy": policy,
        "iou_head": head,
        "iou_base": base,
    }


def test_short_records_keep_their_last_iou():
    records = [_record("a", "c", "oracle", [0.5, 0.9], [0.4])]
    np.testing.assert_allclose(iou_matrix(records, "head", 4), [[0.5, 0.9, 0.9, 0.9]])
    np.testing.assert_allclose(iou_matrix(records, "base", 3), [[0.4, 0.4, 0.4]])


def test_curve_metrics_by_hand():
    ious = np.array([[0.5, 0.86, 0.95], [0.2, 0.3, 0.4]])
    metrics = curve_metrics(ious)
    assert metrics["miou"] == pytest.approx([0.35, 0.58, 0.675])
    assert metrics["auc"] == pytest.approx(np.mean([0.35, 0.58, 0.675]))
    assert metrics["noc@85"] == pytest.approx((2 + 3) / 2)  # never reached counts as K
    assert metrics["noc@90"] == pytest.approx((3 + 3) / 2)
    assert (metrics["nof@85"], metrics["nof@90"]) == (1, 1)


def test_paired_comparison_ci_and_wilcoxon():
    better = paired_comparison(np.full(20, 0.1) + np.linspace(0, 0.01, 20), 500, 0, "k")
    assert better["mean_difference"] > 0 and better["ci95"][0] > 0
    assert better["wilcoxon_p"] < 0.001 and better["n_better"] == 20
    same = paired_comparison(np.zeros(5), 100, 0, "k")
    assert same["wilcoxon_p"] == 1.0 and same["ci95"] == [0.0, 0.0]
    assert paired_comparison(np.array([]), 100, 0, "k") == {"n": 0}
    again = paired_comparison(np.linspace(-1, 1, 9), 300, 7, "k")
    assert again == paired_comparison(np.linspace(-1, 1, 9), 300, 7, "k")  # seeded


def test_aggregate_namespaces_classes_and_compares_policies():
    records = []
    for i in range(6):
        cls = "overall" if i % 2 else "cat"  # a class named like the overall scope
        records.append(_record(f"s{i}", cls, "oracle", [0.5, 0.9, 0.95], [0.5, 0.7, 0.8]))
        records.append(_record(f"s{i}", cls, "random", [0.5, 0.6, 0.65], [0.5, 0.55, 0.6]))
    result = aggregate(records, max_clicks=3, n_bootstrap=200)
    assert result["overall"]["oracle"]["head"]["n_images"] == 6
    assert result["per_class"]["overall"]["oracle"]["head"]["n_images"] == 3
    assert result["paired"]["oracle_vs_random"]["mean_difference"] == pytest.approx(
        np.mean([0.5, 0.9, 0.95]) - np.mean([0.5, 0.6, 0.65])
    )
    assert result["paired"]["head_vs_base_oracle"]["n_better"] == 6
    scopes = [row["scope"] for row in metrics_rows(result)]
    assert scopes.count("overall") == 4 and "class:overall" in scopes


def test_write_report(tmp_path):
    shard = tmp_path / "shard_0000.jsonl"
    rows = [
        _record(f"s{i}", "c", p, [0.3, 0.6], [0.3, 0.5])
        for i in range(3)
        for p in ("oracle", "random")
    ]
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {name: tmp_path / f"out.{name}" for name in ("metrics", "table", "markdown", "curves")}
    out["curves"] = tmp_path / "curves.png"
    result = write_report([shard], out, max_clicks=2, n_bootstrap=100)
    assert json.loads(out["metrics"].read_text()) == json.loads(json.dumps(result))
    assert out["curves"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "oracle_vs_random" in out["markdown"].read_text()


def test_posterior_rules_are_paired_with_their_twins_and_missing_twins_named(tmp_path):
    """bald ran with its twin map_entropy: ``bald_vs_twin`` (same statistics as vs random);
    bald_region ran without map_region: named in ``twins_not_run`` and in the Markdown."""
    records = []
    for i in range(8):
        records.append(_record(f"s{i}", "c", "random", [0.4, 0.5], [0.4, 0.5]))
        records.append(_record(f"s{i}", "c", "bald", [0.4, 0.7 + 0.01 * i], [0.4, 0.5]))
        records.append(_record(f"s{i}", "c", "map_entropy", [0.4, 0.6], [0.4, 0.5]))
        records.append(_record(f"s{i}", "c", "bald_region", [0.4, 0.55], [0.4, 0.5]))
    result = aggregate(records, max_clicks=2, n_bootstrap=300, seed=1)
    paired = result["paired"]
    twin = paired["bald_vs_twin"]
    assert twin["twin"] == "map_entropy" and twin["n"] == 8 and twin["n_better"] == 8
    differences = [(0.7 + 0.01 * i - 0.6) / 2 for i in range(8)]
    assert twin["mean_difference"] == pytest.approx(np.mean(differences))
    expected = paired_comparison(np.array(differences), 300, 1, "bald_vs_twin")
    assert twin["ci95"] == pytest.approx(expected["ci95"])
    for key in ("wilcoxon_p", "n_better", "n_worse"):
        assert twin[key] == pytest.approx(expected[key]), key
    assert "bald_vs_random" in paired and "map_entropy_vs_random" in paired
    assert "bald_region_vs_twin" not in paired and "map_entropy_vs_twin" not in paired
    assert result["twins_not_run"] == {"bald_region": "map_region"}
    text = markdown(result)
    assert "| bald_vs_twin (map_entropy) | 8 |" in text
    assert "bald_region (twin map_region)" in text
    everything = aggregate(
        [
            *records,
            *(_record(f"s{i}", "c", "map_region", [0.4, 0.5], [0.4, 0.5]) for i in range(8)),
        ],
        max_clicks=2,
    )
    assert everything["twins_not_run"] == {} and "bald_region_vs_twin" in everything["paired"]
    assert "Every posterior rule ran with its posterior-free twin" in markdown(everything)


def test_a_rule_with_setting_overrides_is_paired_with_its_twin_at_the_same_settings():
    """A sweep's entries (bald_region at two levels) are rules of their own: each is paired
    with random and with map_region at its own level, never with another level's twin."""
    records = []
    for i in range(6):
        records.append(_record(f"s{i}", "c", "random", [0.4, 0.5], [0.4, 0.5]))
        for level, gain in (("0.15", 0.1), ("0.35", 0.2)):
            rule = f"bald_region@region_error_level={level}"
            twin = f"map_region@region_error_level={level}"
            records.append(_record(f"s{i}", "c", rule, [0.4, 0.6 + gain], [0.4, 0.5]))
            records.append(_record(f"s{i}", "c", twin, [0.4, 0.6], [0.4, 0.5]))
    result = aggregate(records, max_clicks=2, n_bootstrap=100)
    paired = result["paired"]
    for level, gain in (("0.15", 0.1), ("0.35", 0.2)):
        twin = paired[f"bald_region@region_error_level={level}_vs_twin"]
        assert twin["twin"] == f"map_region@region_error_level={level}"
        assert twin["mean_difference"] == pytest.approx(gain / 2)
        assert f"bald_region@region_error_level={level}_vs_random" in paired
    assert result["twins_not_run"] == {}
