"""The posterior-free twins, the two rules aimed at what the oracle sees (iou_lookahead,
entropy_coverage), PolicySettings, and the look-ahead of any grid field, on hand-made states."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, special

from laplace_head.interactive.clicks import (
    COVERAGE_RADIUS,
    GROUND_TRUTH_POLICIES,
    LOOKAHEAD_CANDIDATES,
    POLICIES,
    POSTERIOR_TWINS,
    REGION_ERROR_LEVEL,
    ClickState,
    PolicySettings,
    coverage,
    expected_iou,
    get_policy,
    map_entropy,
    posterior_twin,
    reads_ground_truth,
    reads_posterior,
)
from laplace_head.settings import parse_policy

SHAPE = (256, 256)
RNG = np.random.default_rng(0)


def _state(map_probability, **fields) -> ClickState:
    zeros = np.zeros(SHAPE)
    return ClickState(
        map_probability=map_probability,
        entropy=fields.pop("entropy", zeros),
        bald=fields.pop("bald", zeros),
        predictive_probability=fields.pop("predictive_probability", map_probability),
        **fields,
    )


def _fields_lookahead(one, calls=None):
    """A ClickState.lookahead_fields from ``one(cell, label, field) -> map``."""

    def lookahead(requests, field="predictive_probability"):
        if calls is not None:
            calls.append((len(requests), field))
        return [one(cell, label, field) for cell, label in requests]

    return lookahead


def _sharpening(probability, logit_variance=None):
    """A toy head: a click sets p to its label on the uncertain region (0.1 < p < 0.9,
    4-connected) holding it; logits and variance follow."""
    variance = np.zeros(SHAPE) if logit_variance is None else logit_variance
    regions, _ = ndimage.label((probability > 0.1) & (probability < 0.9))

    def one(cell, label, field):
        near = (regions == regions[cell]) if regions[cell] else np.zeros(SHAPE, dtype=bool)
        p = np.where(near, 0.999 if label else 0.001, probability)
        return {
            "map_probability": p,
            "predictive_probability": p,
            "map_logits": special.logit(p),
            "logit_variance": np.where(near, 0.0, variance),
        }[field]

    return one


def _pick(name, state):
    return POLICIES[name](state, np.random.default_rng(0))


# --- the twin table ---------------------------------------------------------------------------


def test_every_posterior_rule_has_a_registered_twin_that_is_no_posterior_rule() -> None:
    assert set(POSTERIOR_TWINS) == {
        "entropy",
        "bald",
        "bald_raw",
        "bald_region",
        "bald_lookahead",
        "iou_lookahead",
        "entropy_coverage",
    }
    for rule, twin in POSTERIOR_TWINS.items():
        assert rule in POLICIES and twin in POLICIES, rule
        assert twin not in POSTERIOR_TWINS and twin not in GROUND_TRUTH_POLICIES


@pytest.mark.parametrize("twin", sorted(set(POSTERIOR_TWINS.values())))
def test_twins_read_only_the_map_head(twin) -> None:
    """A twin's choice does not move when every posterior quantity (predictive probability,
    entropy, BALD, the look-ahead's predictive maps and variance) is replaced."""
    probability = np.clip(RNG.random(SHAPE) * 0.2 + np.linspace(0, 0.8, 256)[None, :], 0, 1)
    one = _sharpening(probability)
    picks = []
    for seed in (1, 2):
        noise = np.random.default_rng(seed)

        def posterior_noise(cell, label, field, noise=noise):
            if field in ("map_probability", "map_logits"):
                return one(cell, label, field)
            return noise.random(SHAPE)

        state = _state(
            probability,
            entropy=noise.random(SHAPE),
            bald=noise.random(SHAPE),
            predictive_probability=noise.random(SHAPE),
            clicked={(128, 20)},
            lookahead=None,
            lookahead_fields=_fields_lookahead(posterior_noise),
        )
        picks.append(_pick(twin, state))
    assert picks[0] == picks[1] and picks[0] is not None


def test_posterior_rules_do_read_the_posterior() -> None:
    """The counterpart: the same state with another BALD / entropy map moves the rule."""
    probability = np.full(SHAPE, 0.9)
    for name, field in (("bald", "bald"), ("entropy", "entropy"), ("entropy_coverage", "entropy")):
        picks = set()
        for where in ((40, 40), (200, 200)):
            values = np.zeros(SHAPE)
            values[where[0] - 5 : where[0] + 6, where[1] - 5 : where[1] + 6] = 1.0
            picks.add(_pick(name, _state(probability, **{field: values})))
        assert picks == {(40, 40), (200, 200)}, name


# --- map_entropy, map_region ------------------------------------------------------------------


def test_map_entropy_is_the_binary_entropy_of_the_map_probability() -> None:
    p = np.array([[0.5, 0.1, 0.0, 1.0]])
    expected = -(0.1 * np.log(0.1) + 0.9 * np.log(0.9))
    np.testing.assert_allclose(map_entropy(p), [[np.log(2), expected, 0.0, 0.0]], atol=1e-9)


def test_map_entropy_policies_target_the_uncertain_map_region() -> None:
    probability = np.full(SHAPE, 0.95)
    probability[200, 40] = 0.5  # a single uncertain pixel ...
    probability[100:121, 150:171] = 0.6  # ... loses against an uncertain region once smoothed
    state = _state(probability)
    assert _pick("map_entropy", state) == (110, 160)
    assert _pick("map_entropy_raw", state) == (200, 40)


def test_map_region_ranks_regions_by_map_error_mass_not_bald() -> None:
    probability = np.full(SHAPE, 0.98)
    probability[20:31, 20:31] = 0.5  # 121 cells of error 0.5: mass 60.5
    probability[150:191, 100:141] = 0.3  # 1681 cells of error 0.3: mass 504
    bald = np.zeros(SHAPE)
    bald[20:31, 20:31] = 1.0  # the small region holds all the BALD
    state = _state(probability, bald=bald)
    assert _pick("map_region", state) == (170, 120)
    assert _pick("bald_region", state) == (25, 25)
    # Outside the band no region: map_region falls back to map_entropy.
    state.settings = PolicySettings(region_error_level=0.45)
    assert _pick("map_region", state) == _pick("map_entropy", state) == (25, 25)


# --- the look-ahead rules and their twins -----------------------------------------------------


def _two_region_probability():
    probability = np.full(SHAPE, 0.02)
    probability[30:61, 30:61] = 0.4  # region A
    probability[150:231, 150:231] = 0.6  # region B, larger
    return probability


def test_map_lookahead_minimises_the_expected_map_error_with_map_label_odds() -> None:
    probability = _two_region_probability()
    calls = []
    state = _state(
        probability,
        lookahead_fields=_fields_lookahead(_sharpening(probability), calls),
        settings=PolicySettings(lookahead_candidates=2),
    )
    # Clicking B's centre removes more predicted error than clicking A's.
    assert _pick("map_lookahead", state) == (190, 190)
    assert calls == [(4, "map_probability")]  # 2 candidates x 2 labels, one call


def test_lookahead_candidates_setting_sets_the_number_of_requests() -> None:
    probability = _two_region_probability()
    for n in (1, 3, 5):
        calls = []
        state = _state(
            probability,
            lookahead=lambda requests, calls=calls: (
                calls.append(len(requests)) or [probability] * len(requests)
            ),
            lookahead_fields=_fields_lookahead(_sharpening(probability), calls),
            settings=PolicySettings(lookahead_candidates=n),
        )
        for name in ("bald_lookahead", "map_lookahead", "map_iou_lookahead"):
            calls.clear()
            _pick(name, state)
            assert [c if isinstance(c, int) else c[0] for c in calls] == [2 * n], name
    assert PolicySettings().lookahead_candidates == LOOKAHEAD_CANDIDATES == 3


def test_expected_iou_by_hand() -> None:
    logits = np.array([[4.0, 4.0, -4.0, -4.0]])
    q = special.expit(4.0)
    soft = 2 * q / (2 + 2 * (1 - q))
    assert expected_iou(logits) == pytest.approx(soft)
    assert expected_iou(logits, np.zeros_like(logits)) == pytest.approx(soft)
    assert expected_iou(np.full((2, 2), -3.0)) == pytest.approx(0.0)
    # A variance shared by every cell lowers the expected IoU of a confident mask.
    assert expected_iou(logits, np.full_like(logits, 9.0)) < soft - 0.05
    # It equals a Monte Carlo draw of the shared shift.
    draws = np.random.default_rng(0).standard_normal(200_000)[:, None]
    q_draws = special.expit(logits + 3.0 * draws)
    inside = q_draws[:, :2].sum(axis=1)
    monte_carlo = np.mean(inside / (2 + q_draws[:, 2:].sum(axis=1)))
    assert expected_iou(logits, np.full_like(logits, 9.0)) == pytest.approx(monte_carlo, abs=2e-3)


def test_iou_lookahead_reads_the_variance_after_the_click() -> None:
    """Two candidates whose clicks give the same MAP logits: the one leaving a large posterior
    variance over the object loses; with the MAP head alone (the twin) the first wins."""
    probability = np.full(SHAPE, 0.02)
    probability[30:61, 30:61] = 0.6
    probability[150:181, 150:181] = 0.6
    bald = np.zeros(SHAPE)
    bald[30:61, 30:61] = 2.0  # region A ranks first, so it is the first candidate
    bald[150:181, 150:181] = 1.0
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    after_logits = special.logit(np.where(probability > 0.5, 0.95, 0.02))

    def one(cell, label, field):
        if field == "map_logits":
            return after_logits
        if field == "logit_variance":
            uncertain = cell[0] < 100  # a click in A leaves the mask uncertain
            return np.full(SHAPE, 25.0 if uncertain else 0.01)
        return np.where(probability > 0.5, 0.95, 0.02)

    state = _state(
        probability,
        bald=bald,
        lookahead_fields=_fields_lookahead(one),
        settings=PolicySettings(lookahead_candidates=2),
    )
    assert _pick("iou_lookahead", state) == (165, 165)
    assert _pick("map_iou_lookahead", state) == (45, 45)  # ties: the first candidate


def test_iou_lookahead_prefers_the_click_that_settles_the_larger_region() -> None:
    """Both regions are in the mask at p = 0.6: settling the large one gives the larger
    expected IoU (0.60 against 0.54 by hand)."""
    probability = _two_region_probability()
    probability[30:61, 30:61] = 0.6
    state = _state(probability, lookahead_fields=_fields_lookahead(_sharpening(probability)))
    assert _pick("iou_lookahead", state) == (190, 190)
    assert _pick("map_iou_lookahead", state) == (190, 190)


@pytest.mark.parametrize("name", ["map_lookahead", "iou_lookahead", "map_iou_lookahead"])
def test_lookahead_rules_need_the_field_lookahead(name) -> None:
    state = _state(_two_region_probability())
    with pytest.raises(ValueError, match=f"{name}.*lookahead_fields"):
        _pick(name, state)


# --- entropy_coverage and map_coverage --------------------------------------------------------


def test_coverage_term_by_hand() -> None:
    state = _state(np.full(SHAPE, 0.5), clicked={(100, 100)})
    values = coverage(state)
    assert values[100, 100] == 0.0
    r = COVERAGE_RADIUS
    assert values[100, 100 + 16] == pytest.approx(1 - np.exp(-(16**2) / (2 * r**2)))
    np.testing.assert_array_equal(coverage(_state(np.full(SHAPE, 0.5))), np.ones(SHAPE))


@pytest.mark.parametrize("name, field", [("entropy_coverage", "entropy"), ("map_coverage", None)])
def test_coverage_rules_trade_uncertainty_for_distance_from_the_clicks(name, field) -> None:
    probability = np.full(SHAPE, 0.98)
    entropy = np.zeros(SHAPE)
    near, far = (100, 110), (200, 200)
    for (row, col), level in ((near, 0.6), (far, 0.7)):
        probability[row - 8 : row + 9, col - 8 : col + 9] = level
        entropy[row - 8 : row + 9, col - 8 : col + 9] = map_entropy(np.array(level))
    entropy[near[0] - 8 : near[0] + 9, near[1] - 8 : near[1] + 9] *= 1.2  # near is a bit hotter
    if field is None:  # the MAP twin: make near the more uncertain one on the MAP head
        probability[near[0] - 8 : near[0] + 9, near[1] - 8 : near[1] + 9] = 0.5
    state = _state(probability, entropy=entropy)
    assert _pick(name, state) == near  # no click yet: the most uncertain wins
    state.clicked = {(100, 100)}  # a click 10 cells from the near blob
    assert _pick(name, state) == far
    state.settings = PolicySettings(coverage_radius=2.0)  # a short reach: near wins again
    assert _pick(name, state) == near


# --- PolicySettings ---------------------------------------------------------------------------


def test_policy_settings_defaults_are_the_schemas() -> None:
    from laplace_head.config.loader import fill_defaults, load_schema

    active = fill_defaults({}, load_schema())["active_prompting"]
    settings = PolicySettings()
    assert settings.region_error_level == active["region_error_level"] == REGION_ERROR_LEVEL
    assert settings.lookahead_candidates == active["lookahead_candidates"]
    assert settings.coverage_radius == active["coverage_radius"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"region_error_level": 0.0}, "region_error_level"),
        ({"region_error_level": 0.6}, "region_error_level"),
        ({"lookahead_candidates": 0}, "lookahead_candidates"),
        ({"lookahead_candidates": 2.5}, "lookahead_candidates"),
        ({"coverage_radius": 0.0}, "coverage_radius"),
    ],
)
def test_bad_policy_settings_are_refused(bad, match) -> None:
    with pytest.raises(ValueError, match=f"active_prompting.{match}"):
        PolicySettings(**bad)


def test_policy_settings_of_takes_none_an_instance_or_a_mapping() -> None:
    """PolicySettings.of: None -> the defaults, an instance as is, a run's settings mapping ->
    its fields, checked like the constructor's."""
    assert PolicySettings.of(None) == PolicySettings()
    given = PolicySettings(region_error_level=0.15)
    assert PolicySettings.of(given) is given
    mapping = {"region_error_level": 0.15, "lookahead_candidates": 2, "coverage_radius": 8.0}
    assert PolicySettings.of(mapping) == PolicySettings(**mapping)
    assert PolicySettings.of({"coverage_radius": 4.0}).coverage_radius == 4.0
    with pytest.raises(ValueError, match="active_prompting.region_error_level"):
        PolicySettings.of({"region_error_level": 0.6})
    with pytest.raises(ValueError, match="'region_level'.*valid: region_error_level"):
        PolicySettings.of({"region_level": 0.15})


def test_region_band_setting_moves_the_regions() -> None:
    probability = np.full(SHAPE, 0.98)
    probability[20:31, 20:31] = 0.45  # inside every band
    probability[150:191, 100:141] = 0.85  # error 0.15: a region only for levels <= 0.15
    state = _state(probability)
    assert _pick("map_region", state) == (25, 25)
    state.settings = PolicySettings(region_error_level=0.1)
    assert _pick("map_region", state) == (170, 120)


# --- policy entries with setting overrides (a sweep's entries) --------------------------------


def test_a_policy_entry_parses_into_its_rule_and_overrides() -> None:
    assert parse_policy("bald_region") == ("bald_region", {})
    name, overrides = parse_policy("bald_lookahead@lookahead_candidates=5, region_error_level=0.2")
    assert name == "bald_lookahead"
    assert overrides == {"lookahead_candidates": 5, "region_error_level": 0.2}
    assert isinstance(overrides["lookahead_candidates"], int)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("bald_region@level=0.2", "is not KEY=VALUE with KEY one of region_error_level"),
        ("bald_region@region_error_level", "is not KEY=VALUE"),
        ("bald_region@region_error_level=0.2,region_error_level=0.3", "given twice"),
        ("bald_lookahead@lookahead_candidates=2.5", "is not an integer"),
        ("bald_region@region_error_level=nan", "is not a finite number"),
        ("bald_regoin@region_error_level=0.2", "unknown click policy 'bald_regoin"),
        ("bald_region@region_error_level=0.7", r"click policy .*must be in \(0, 0.5\]"),
        ("bald_lookahead@lookahead_candidates=0", "must be an integer >= 1"),
    ],
)
def test_a_bad_policy_entry_is_refused_naming_it(entry, match) -> None:
    with pytest.raises(ValueError, match=match):
        get_policy(entry)


def test_an_entry_runs_its_rule_with_its_settings_and_leaves_the_state_as_it_was() -> None:
    """Two uncertain regions: a faint one holding more BALD (p = 0.2, outside the default
    band 0.25 <= p <= 0.75) and a strong one holding less (p = 0.5). bald_region picks the
    strong one at the default level and the faint one at level 0.15; the entry
    ``bald_region@region_error_level=0.15`` picks as the rule with a state of that level."""
    probability = np.zeros(SHAPE)
    bald = np.zeros(SHAPE)
    probability[20:60, 20:60], bald[20:60, 20:60] = 0.2, 0.3
    probability[150:170, 150:170], bald[150:170, 150:170] = 0.5, 0.2
    state = _state(probability, bald=bald)
    default = _pick("bald_region", state)
    assert 150 <= default[0] < 170 and 150 <= default[1] < 170
    entry = get_policy("bald_region@region_error_level=0.15")(state, np.random.default_rng(0))
    assert 20 <= entry[0] < 60 and 20 <= entry[1] < 60
    reference = _state(probability, bald=bald, settings=PolicySettings(region_error_level=0.15))
    assert entry == _pick("bald_region", reference)
    assert state.settings == PolicySettings()  # the override was for that one call
    assert _pick("bald_region", state) == default


def test_an_entry_keeps_its_rule_s_twin_and_kind() -> None:
    assert posterior_twin("bald_region@region_error_level=0.15") == (
        "map_region@region_error_level=0.15"
    )
    assert posterior_twin("bald_lookahead@lookahead_candidates=5") == (
        "map_lookahead@lookahead_candidates=5"
    )
    assert posterior_twin("map_region@region_error_level=0.15") is None
    assert posterior_twin("random") is None
    assert reads_posterior("bald_region@region_error_level=0.15")
    assert not reads_posterior("map_region@region_error_level=0.15")
    assert reads_ground_truth("oracle") and not reads_ground_truth("bald_region")
