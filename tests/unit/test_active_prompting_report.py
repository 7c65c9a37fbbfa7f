"""laplace_head.evaluation.active_prompting: mIoU@k, AUC, NoC/NoF, paired tests, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from laplace_head.evaluation.active_prompting import (
    aggregate,
    curve_metrics,
    iou_matrix,
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
