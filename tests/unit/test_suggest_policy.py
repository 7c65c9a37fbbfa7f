"""``active_prompting.suggest_policy``: the shipped click rule, suggest()'s default, always in
stage 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.laplace_fixtures import make_fitted_run

from laplace_head.bayes.posterior import load_posterior
from laplace_head.config.loader import load_configs, load_schema, validate_config
from laplace_head.errors import LaplaceHeadError
from laplace_head.interactive.clicks import GROUND_TRUTH_POLICIES, POLICIES
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.interactive.session import ClickSession
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter
from laplace_head.settings import stage8_policies, stage_params


def _config(**active) -> dict:
    return validate_config({"active_prompting": active}, check_paths=False)


def test_schema_lists_the_registry() -> None:
    section = load_schema()["properties"]["active_prompting"]["properties"]
    names = next(s["enum"] for s in section["policies"]["items"]["anyOf"] if "enum" in s)
    assert set(names) == set(POLICIES)
    assert set(section["suggest_policy"]["enum"]) == set(POLICIES) - GROUND_TRUTH_POLICIES


def test_stage8_appends_the_shipped_rule_once_without_reordering() -> None:
    assert stage8_policies(["oracle", "random"], "bald_lookahead") == [
        "oracle",
        "random",
        "bald_lookahead",
    ]
    assert stage8_policies(["bald", "oracle", "random"], "oracle") == ["bald", "oracle", "random"]
    config = _config(policies=["random", "bald_region", "oracle"], suggest_policy="bald_region")
    params = stage_params(config)["active_prompting"]
    assert params["policies"] == ["random", "bald_region", "oracle"]
    assert params["suggest_policy"] == "bald_region"
    config = _config(policies=["oracle", "random"], suggest_policy="map_margin")
    assert stage_params(config)["active_prompting"]["policies"] == [
        "oracle",
        "random",
        "map_margin",
    ]
    # An ablation variant clicks with ablation.policies, plus the shipped rule.
    config["ablation"]["policies"] = ["oracle", "random"]
    variant = next(iter(config["ablation"]["variants"]))
    assert stage_params(config, variant)["active_prompting"]["policies"] == [
        "oracle",
        "random",
        "map_margin",
    ]
    assert stage_params(config)["ablation"]["policies"] == ["oracle", "random", "map_margin"]


@pytest.mark.parametrize(
    ("overlay", "rule"), [("demo.yaml", "bald_region"), ("real_dev.yaml", "bald_region")]
)
def test_shipped_configs_name_their_rule_and_keep_their_policies(
    repo_root: Path, overlay: str, rule: str
) -> None:
    config = load_configs(
        [repo_root / "config" / "config.yaml", repo_root / "config" / overlay], check_paths=False
    )
    assert config["active_prompting"]["suggest_policy"] == rule
    params = stage_params(config)["active_prompting"]
    assert params["policies"] == config["active_prompting"]["policies"]  # listed already


@pytest.mark.parametrize("bad", ["oracle", "nope"])
def test_a_rule_that_cannot_suggest_is_refused(bad: str) -> None:
    with pytest.raises(LaplaceHeadError, match=f"suggest_policy = '{bad}' is not one of"):
        _config(suggest_policy=bad)


@pytest.fixture(scope="module")
def posterior(tmp_path_factory):
    return load_posterior(make_fitted_run(tmp_path_factory.mktemp("fitted")).laplace_dir)


def test_suggest_uses_the_predictor_rule_by_default(posterior) -> None:
    default = InteractivePredictor(RandomWalkerSegmenter(), posterior, 8.0)
    assert default.suggest_policy == _config()["active_prompting"]["suggest_policy"]
    predictor = InteractivePredictor(
        RandomWalkerSegmenter(), posterior, 8.0, suggest_policy="map_margin"
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    session = ClickSession(predictor, image)
    session.add_click(20, 18, 1)
    session.add_click(2, 2, 0)
    prediction = session.predict()
    chosen = predictor.suggest(prediction, k=2)
    assert chosen == predictor.suggest(prediction, k=2, policy="map_margin")
    assert session.suggest(k=2) == chosen
    assert chosen != predictor.suggest(prediction, k=2, policy="random")
    for bad in ("oracle", "nope"):
        with pytest.raises(ValueError, match=f"suggest_policy.*{bad!r}.*bald_lookahead"):
            InteractivePredictor(RandomWalkerSegmenter(), posterior, 8.0, suggest_policy=bad)
