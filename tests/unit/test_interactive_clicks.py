"""laplace_head.interactive.clicks: RITM clickers, suggestion policies, grid coordinates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from laplace_head.interactive.clicks import (
    GROUND_TRUTH_POLICIES,
    LOOKAHEAD_CANDIDATES,
    POLICIES,
    REGION_ERROR_LEVEL,
    ClickState,
    click_rng,
    error_regions,
    first_click,
    grid_to_image,
    image_to_grid,
    interior_point,
    likely_label,
    oracle_click,
    smooth_map,
    suggest,
    suggest_cells,
)
from laplace_head.prompts.sampling import rescale_points


def _box(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _brute_force_centre(region: np.ndarray) -> tuple[int, int]:
    """Cell of ``region`` farthest (Euclidean) from every cell outside it, the ring of cells
    just outside the image counting as outside; first in row-major order on ties."""
    height, width = region.shape
    padded = np.pad(region, 1)
    outside = np.argwhere(~padded) - 1  # image coordinates of background + border ring
    best, best_cell = -1.0, None
    for row, col in np.argwhere(region):
        distance = np.sqrt(((outside - (row, col)) ** 2).sum(axis=1)).min()
        if distance > best:
            best, best_cell = distance, (int(row), int(col))
    return best_cell


# --- first click ------------------------------------------------------------------------------


def test_first_click_is_the_interior_most_pixel() -> None:
    gt = _box((256, 256), (40, 81), (100, 141))  # 41 x 41 square centred at (60, 120)
    assert first_click(gt) == (60, 120)
    # An L shape: the thick bar wins over the thin one.
    gt = _box((256, 256), (10, 20), (10, 200)) | _box((256, 256), (100, 160), (30, 90))
    assert first_click(gt) == (129, 59)  # ties (even sides) go to the lowest row, then col


def test_first_click_counts_the_image_border_as_boundary() -> None:
    # A square in the corner: without the border it would be clicked at the corner itself.
    gt = _box((256, 256), (0, 40), (0, 40))
    assert first_click(gt) == (19, 19)
    # The whole left half: distance to the border and to the right edge alike.
    gt = _box((256, 256), (0, 256), (0, 128))
    assert first_click(gt) == (63, 63)  # first of the many cells 64 px from any boundary


@pytest.mark.parametrize("seed", range(5))
def test_interior_point_matches_brute_force(seed) -> None:
    rng = np.random.default_rng(seed)
    region = np.zeros((24, 31), dtype=bool)
    for _ in range(4):
        r, c = rng.integers(0, 20), rng.integers(0, 27)
        region[r : r + rng.integers(2, 9), c : c + rng.integers(2, 9)] = True
    assert interior_point(region) == _brute_force_centre(region)


def test_first_click_rejects_an_empty_mask() -> None:
    with pytest.raises(ValueError, match="no foreground"):
        first_click(np.zeros((256, 256), dtype=bool))


# --- oracle click -----------------------------------------------------------------------------


def test_oracle_false_negative_gives_a_positive_click() -> None:
    gt = _box((256, 256), (40, 81), (100, 141))
    assert oracle_click(np.zeros_like(gt), gt) == ((60, 120), 1)


def test_oracle_false_positive_gives_a_negative_click() -> None:
    gt = _box((256, 256), (40, 81), (100, 141))
    extra = _box((256, 256), (150, 201), (10, 61))  # 51 x 51 false positive, centre (175, 35)
    assert oracle_click(gt | extra, gt) == ((175, 35), 0)


def test_oracle_compares_fn_and_fp_regions_by_size() -> None:
    shape = (64, 64)
    gt = _box(shape, (0, 10), (0, 10)) | _box(shape, (30, 40), (30, 44))  # 100 + 140 px
    pred = _box(shape, (0, 10), (0, 10)) | _box(shape, (50, 62), (2, 12))  # FP of 120 px
    # FN region 140 px > FP region 120 px: positive click at the FN region's centre.
    assert oracle_click(pred, gt) == (_brute_force_centre(_box(shape, (30, 40), (30, 44))), 1)
    # Now the FP region is bigger (12 x 13 = 156 px).
    pred = _box(shape, (0, 10), (0, 10)) | _box(shape, (50, 62), (2, 15))
    assert oracle_click(pred, gt)[1] == 0
    # Equal sizes: the false negative wins (deterministic).
    pred = _box(shape, (0, 10), (0, 10)) | _box(shape, (50, 60), (2, 16))  # 140 px
    assert oracle_click(pred, gt)[1] == 1


def test_oracle_picks_the_largest_connected_region_not_the_largest_error_mask() -> None:
    shape = (64, 64)
    gt = np.zeros(shape, dtype=bool)
    # Three FN blobs of 36 px each (108 px of FN in all) and one FP blob of 64 px.
    for r in (2, 20, 40):
        gt |= _box(shape, (r, r + 6), (2, 8))
    pred = _box(shape, (30, 38), (40, 48))
    assert oracle_click(pred, gt) == (_brute_force_centre(pred), 0)


def test_oracle_counts_the_border_as_boundary() -> None:
    # FN touching the bottom-right corner: 40 rows x 56 cols, so the distance is at most 20 (the
    # border counting as boundary) and the first cell reaching it is (235, 219)
    gt = _box((256, 256), (216, 256), (200, 256))
    (row, col), label = oracle_click(np.zeros_like(gt), gt)
    assert label == 1 and (row, col) == _brute_force_centre(gt) == (235, 219)


def test_oracle_excludes_clicked_pixels_and_treats_them_as_boundary() -> None:
    shape = (40, 40)
    gt = _box(shape, (5, 26), (5, 26))  # 21 x 21 square, centre (15, 15)
    pred = np.zeros(shape, dtype=bool)
    assert oracle_click(pred, gt) == ((15, 15), 1)
    cell, label = oracle_click(pred, gt, {(15, 15)})
    region = gt.copy()
    region[15, 15] = False  # the clicked cell is boundary: the next centre moves away from it
    assert label == 1 and cell == _brute_force_centre(region) and cell != (15, 15)
    # A bool mask of clicked cells works the same.
    clicked = np.zeros(shape, dtype=bool)
    clicked[15, 15] = True
    assert oracle_click(pred, gt, clicked) == (cell, label)
    # A region made only of clicked cells is no region: the other error gets the click.
    gt = _box(shape, (0, 1), (0, 1)) | _box(shape, (30, 32), (30, 32))
    pred = _box(shape, (30, 32), (30, 32)) | _box(shape, (10, 12), (10, 11))  # FN 1 px, FP 2 px
    assert oracle_click(pred, gt, {(10, 10), (11, 10)}) == ((0, 0), 1)


def test_oracle_returns_none_without_error() -> None:
    gt = _box((256, 256), (40, 81), (100, 141))
    assert oracle_click(gt, gt) is None
    pred = gt.copy()
    pred[60, 120] = False  # one FN pixel, already clicked
    assert oracle_click(pred, gt, {(60, 120)}) is None
    assert oracle_click(pred, gt) == ((60, 120), 1)


# --- policies ---------------------------------------------------------------------------------


def _state(seed: int = 0, shape=(256, 256), with_gt: bool = False) -> ClickState:
    rng = np.random.default_rng(seed)
    probability = smooth_map(rng.random(shape), 6.0)
    probability = (probability - probability.min()) / (probability.max() - probability.min())
    gt = probability > 0.6
    return ClickState(
        map_probability=probability,
        entropy=rng.random(shape),
        bald=rng.random(shape) * 0.1,
        clicked={(0, 0)},
        gt=gt if with_gt else None,
        predictive_probability=probability,
        lookahead=_fake_lookahead(probability),
    )


def _batched(one):
    """A :attr:`ClickState.lookahead` from ``one(cell, label) -> map``."""
    return lambda requests: [one(cell, label) for cell, label in requests]


def _fake_lookahead(probability: np.ndarray):
    """A look-ahead that sharpens p around the clicked cell (a deterministic toy head)."""
    rows, cols = np.mgrid[: probability.shape[0], : probability.shape[1]]

    def lookahead(cell, label):
        near = (rows - cell[0]) ** 2 + (cols - cell[1]) ** 2 < 15**2
        return np.where(near, float(label), probability)

    return _batched(lookahead)


def _run_policy(name: str, sample_id: str, seed: int = 7, n_clicks: int = 5) -> list:
    state = _state(with_gt=name in GROUND_TRUTH_POLICIES)
    cells = []
    for index in range(n_clicks):
        cell = POLICIES[name](state, click_rng(seed, sample_id, name, index))
        cells.append(cell)
        state.clicked.add(cell)
    return cells


def test_registry_has_the_documented_policies() -> None:
    assert {"oracle", "random", "entropy", "bald", "map_margin"} <= set(POLICIES)
    assert {"bald_raw", "bald_region", "bald_lookahead"} <= set(POLICIES)
    assert GROUND_TRUTH_POLICIES == {"oracle"}


@pytest.mark.parametrize(
    "name",
    [
        "oracle",
        "random",
        "entropy",
        "bald",
        "map_margin",
        "bald_raw",
        "bald_region",
        "bald_lookahead",
    ],
)
def test_every_policy_is_deterministic_and_never_reclicks(name) -> None:
    first = _run_policy(name, "cls/a")
    assert first == _run_policy(name, "cls/a")
    assert len(set(first)) == len(first) and (0, 0) not in first
    assert all(isinstance(v, int) for cell in first for v in cell)


def test_random_clicks_depend_on_sample_id_seed_and_click_index_only() -> None:
    assert _run_policy("random", "cls/a") != _run_policy("random", "cls/b")
    assert _run_policy("random", "cls/a", seed=7) != _run_policy("random", "cls/a", seed=8)
    # Click i's draw does not depend on earlier draws (order-independent seeding).
    rng_a = click_rng(7, "cls/a", "random", 3)
    rng_b = click_rng(7, "cls/a", "random", 3)
    assert rng_a.integers(1 << 30) == rng_b.integers(1 << 30)


def test_random_policy_is_uniform_over_unclicked_cells_and_runs_out() -> None:
    shape = (4, 4)
    half = np.full(shape, 0.5)
    state = ClickState(
        np.zeros(shape),
        np.zeros(shape),
        np.zeros(shape),
        clicked=set(),
        predictive_probability=half,
        lookahead=_fake_lookahead(half),
    )
    cells = []
    for index in range(16):
        cells.append(POLICIES["random"](state, click_rng(0, "s", "random", index)))
        state.clicked.add(cells[-1])
    assert sorted(cells) == sorted(itertools.product(range(4), range(4)))
    assert POLICIES["random"](state, click_rng(0, "s", "random", 16)) is None
    for name in ("entropy", "bald", "map_margin", "bald_raw", "bald_region", "bald_lookahead"):
        assert POLICIES[name](state, click_rng(0, "s", name, 16)) is None


@pytest.mark.parametrize("name, field", [("entropy", "entropy"), ("bald", "bald")])
def test_uncertainty_policies_take_the_smoothed_argmax(name, field) -> None:
    shape = (256, 256)
    values = np.zeros(shape)
    values[200, 40] = 1.0  # a single hot pixel ...
    values[100:121, 150:171] = 0.5  # ... loses against a hot region once smoothed
    state = ClickState(np.full(shape, 0.9), np.zeros(shape), np.zeros(shape))
    setattr(state, field, values)
    assert POLICIES[name](state, np.random.default_rng(0)) == (110, 160)
    state.clicked.add((110, 160))
    assert POLICIES[name](state, np.random.default_rng(0)) in {(109, 160), (110, 159)}


def test_map_margin_policy_targets_p_near_one_half() -> None:
    shape = (256, 256)
    probability = np.full(shape, 0.95)
    probability[30:51, 200:221] = 0.5
    state = ClickState(probability, np.zeros(shape), np.zeros(shape))
    assert POLICIES["map_margin"](state, np.random.default_rng(0)) == (40, 210)


def test_oracle_policy_needs_the_ground_truth_and_uses_the_head_mask() -> None:
    state = _state()
    with pytest.raises(ValueError, match="ground truth"):
        POLICIES["oracle"](state, np.random.default_rng(0))
    state.gt = state.map_probability > 0.5  # a perfect head: nothing to click
    assert POLICIES["oracle"](state, np.random.default_rng(0)) is None


def test_excluded_cells_are_never_picked() -> None:
    state = _state()
    state.excluded = np.ones((256, 256), dtype=bool)
    state.excluded[5, 7] = False
    for name in ("random", "entropy", "bald", "map_margin", "bald_raw"):
        assert POLICIES[name](state, np.random.default_rng(0)) == (5, 7)
    state.predictive_probability = np.full((256, 256), 0.5)  # one region: the free cell
    for name in ("bald_region", "bald_lookahead"):
        assert POLICIES[name](state, np.random.default_rng(0)) == (5, 7)


# --- BALD rules: raw, region, look-ahead ------------------------------------------------------


def _hot_pixel_and_plateau() -> np.ndarray:
    values = np.zeros((256, 256))
    values[200, 40] = 1.0  # a single hot pixel ...
    values[100:121, 150:171] = 0.5  # ... and a plateau that wins once smoothed
    return values


def test_bald_raw_takes_the_unsmoothed_argmax() -> None:
    shape = (256, 256)
    state = ClickState(np.full(shape, 0.9), np.zeros(shape), _hot_pixel_and_plateau())
    assert POLICIES["bald"](state, np.random.default_rng(0)) == (110, 160)
    assert POLICIES["bald_raw"](state, np.random.default_rng(0)) == (200, 40)
    state.clicked.add((200, 40))  # next: the plateau's first cell in row-major order
    assert POLICIES["bald_raw"](state, np.random.default_rng(0)) == (100, 150)


# Three uncertain regions (p in [0.25, 0.75]) on a confident background (p = 0.02):
#   SMALL  5 x 5,   BALD 0.6 / px (sum 15):   the highest pixels;
#   MID    25 x 25, BALD 0.1 / px (sum 62.5): the largest BALD sum, centre (112, 60);
#   BIG    51 x 51, BALD 0.01 / px (sum 26):  the largest region, centre (205, 205).
SMALL = ((20, 25), (20, 25))
MID = ((100, 125), (48, 73))
BIG = ((180, 231), (180, 231))


def _region_state() -> ClickState:
    shape = (256, 256)
    probability = np.full(shape, 0.02)
    bald = np.zeros(shape)
    for box, p, b in ((SMALL, 0.5, 0.6), (MID, 0.4, 0.1), (BIG, 0.7, 0.01)):
        probability[box[0][0] : box[0][1], box[1][0] : box[1][1]] = p
        bald[box[0][0] : box[0][1], box[1][0] : box[1][1]] = b
    bald[150, 150] = 0.05  # BALD outside every region does not count
    return ClickState(
        probability, np.zeros(shape), bald, clicked=set(), predictive_probability=probability
    )


def test_bald_region_clicks_the_centre_of_the_region_with_the_largest_bald_sum() -> None:
    state = _region_state()
    assert POLICIES["bald_raw"](state, np.random.default_rng(0)) == (20, 20)  # SMALL's pixel
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == (112, 60)  # MID's centre
    assert (112, 60) == _brute_force_centre(_box((256, 256), *MID))


def test_suggest_cells_points_at_different_regions_best_first() -> None:
    state = _region_state()
    cells = suggest_cells(state, "bald_region", k=4, min_distance=40.0)
    # MID (largest BALD sum), then BIG, then SMALL: each pick's disc covers its whole region
    assert cells[:3] == [(112, 60), (205, 205), (22, 22)]
    assert (22, 22) == _brute_force_centre(_box((256, 256), *SMALL))
    # no region left: the rule falls back to smoothed BALD, around the lone BALD pixel
    assert np.hypot(cells[3][0] - 150, cells[3][1] - 150) < 10
    for i, j in itertools.combinations(range(len(cells)), 2):
        assert np.hypot(cells[i][0] - cells[j][0], cells[i][1] - cells[j][1]) >= 40
    assert all(state.excluded[cell] for cell in cells)  # the state remembers the picks


@pytest.mark.parametrize("radius", [0.0, 0.5, 1.0, 2.5, 16.0, 40.0, 300.0])
@pytest.mark.parametrize("cell", [(0, 0), (3, 250), (128, 77), (255, 255)])
def test_a_picks_exclusion_disc_is_every_cell_closer_than_the_distance(cell, radius) -> None:
    """The disc suggest_cells excludes around a pick (computed on its bounding box) is the
    pick and every grid cell whose centre is closer than ``min_distance``, and nothing
    already excluded is lost."""
    from laplace_head.interactive.clicks import _exclude_disc

    rows, cols = np.mgrid[:256, :256]
    earlier = np.zeros((256, 256), dtype=bool)
    earlier[200:, :10] = True
    expected = earlier | ((rows - cell[0]) ** 2 + (cols - cell[1]) ** 2 < radius**2)
    expected[cell] = True
    excluded = earlier.copy()
    _exclude_disc(excluded, cell, radius)
    assert np.array_equal(excluded, expected)


def test_suggest_cells_without_distance_never_repeats_and_runs_out() -> None:
    shape = (4, 4)
    state = ClickState(np.full(shape, 0.9), np.zeros(shape), np.zeros(shape))
    cells = suggest_cells(state, "random", k=20, min_distance=0.0, seed=3, stream=("a",))
    assert len(cells) == 16 and len(set(cells)) == 16
    again = ClickState(np.full(shape, 0.9), np.zeros(shape), np.zeros(shape))
    assert suggest_cells(again, "random", k=20, min_distance=0.0, seed=3, stream=("a",)) == cells
    with pytest.raises(ValueError, match="unknown click policy"):
        suggest_cells(state, "nope", k=1, min_distance=0.0)


def test_likely_label_is_the_class_the_posterior_predicts() -> None:
    probability = np.array([[0.2, 0.5], [0.8, 0.51]])
    cells = ((0, 0), (0, 1), (1, 0), (1, 1))
    assert [likely_label(probability, cell) for cell in cells] == [0, 0, 1, 1]


def test_suggest_maps_the_policy_cells_to_image_pixels_with_the_likely_label() -> None:
    """The one suggestion route: suggest_cells' picks, in image pixels, labelled by the
    predictive probability (not the MAP probability)."""
    state = _region_state()
    state.map_probability = 1.0 - state.predictive_probability  # a MAP that disagrees
    cells = suggest_cells(_region_state(), "bald_region", k=4, min_distance=40.0)
    image_hw = (480, 640)
    suggestions = suggest(state, "bald_region", 4, 40.0, image_hw)
    assert [(s.row, s.col) for s in suggestions] == cells
    assert [s.rank for s in suggestions] == [0, 1, 2, 3]
    for s in suggestions:
        assert (s.x, s.y) == grid_to_image(s.row, s.col, image_hw)
        assert image_to_grid(s.x, s.y, image_hw) == (s.row, s.col)
        p = state.predictive_probability[s.row, s.col]
        assert s.predictive_probability == p and s.label == int(p > 0.5)
    assert suggestions[0].to_dict()["label"] == suggestions[0].label
    small = ClickState(np.full((4, 6), 0.9), np.zeros((4, 6)), np.zeros((4, 6)))
    small.predictive_probability = np.full((4, 6), 0.9)
    [only] = suggest(small, "random", 1, 0.0, (4, 6), seed=1)
    assert (only.x, only.y, only.label) == (only.col, only.row, 1)  # image = grid here
    with pytest.raises(ValueError, match="ground truth"):
        suggest(state, "oracle", 1, 0.0, image_hw)
    with pytest.raises(ValueError, match="unknown click policy"):
        suggest(state, "nope", 1, 0.0, image_hw)
    state.predictive_probability = None
    with pytest.raises(ValueError, match="predictive_probability"):
        suggest(state, "bald", 1, 0.0, image_hw)


def test_bald_region_treats_blocked_cells_as_boundary_and_never_picks_them() -> None:
    state = _region_state()
    state.clicked.add((112, 60))
    cell = POLICIES["bald_region"](state, np.random.default_rng(0))
    # Still MID (its sum barely drops), clicked at the centre of MID minus the clicked cell;
    # brute force on a window around MID (every cell outside it is outside the region).
    window = _box((256, 256), *MID)[90:141, 40:81]
    window[112 - 90, 60 - 40] = False
    row, col = _brute_force_centre(window)
    assert cell == (row + 90, col + 40) and cell != (112, 60)
    # MID excluded entirely: BIG (sum 26) beats SMALL (sum 15).
    state.excluded = _box((256, 256), *MID)
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == (205, 205)


def test_bald_region_uses_4_connectivity_and_the_error_level() -> None:
    shape = (256, 256)
    probability = np.full(shape, 0.98)
    bald = np.full(shape, 0.1)
    # Two 11 x 11 squares touching at a corner (sum 12.1 each; 24.2 if 8-connected) ...
    probability[200:211, 200:211] = 0.5
    probability[211:222, 211:222] = 0.5
    # ... and an 11 x 16 strip (sum 17.6), at exactly the error level (p = 0.75).
    probability[10:21, 200:216] = 1 - REGION_ERROR_LEVEL
    state = ClickState(
        probability, np.zeros(shape), bald, clicked=set(), predictive_probability=probability
    )
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == (15, 205)
    # Just below the error level the strip is no region: a corner square wins.
    probability[10:21, 200:216] = 0.76
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == (205, 205)


def test_error_regions_are_the_regions_the_region_rules_rank() -> None:
    state = _region_state()
    labels, count = error_regions(state, state.predictive_probability)
    assert count == 3 and labels.max() == 3
    # each box is one region, in scan order; nothing else (the BALD-only cell included)
    for index, box in enumerate((SMALL, MID, BIG), start=1):
        assert np.array_equal(labels == index, _box((256, 256), *box))
    # the clicked cell and the excluded cells leave them (blocked cells are no region)
    state.clicked.add((112, 60))
    state.excluded = _box((256, 256), *SMALL)
    labels, count = error_regions(state, state.predictive_probability)
    assert count == 2 and labels[112, 60] == 0 and not labels[_box((256, 256), *SMALL)].any()
    # bald_region clicks inside the region with the largest BALD sum
    row, col = POLICIES["bald_region"](state, np.random.default_rng(0))
    assert labels[row, col] == labels[100, 48] != 0


def test_bald_region_falls_back_to_smoothed_bald_without_an_uncertain_region() -> None:
    shape = (256, 256)
    confident = np.full(shape, 0.9)  # error 0.1 < REGION_ERROR_LEVEL everywhere
    state = ClickState(
        confident, np.zeros(shape), _hot_pixel_and_plateau(), predictive_probability=confident
    )
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == (110, 160)
    state.clicked.add((110, 160))
    expected = POLICIES["bald"](state, np.random.default_rng(0))
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == expected
    # The only uncertain cells are clicked: no region either.
    state.predictive_probability = confident.copy()
    state.predictive_probability[110, 160] = 0.5
    assert POLICIES["bald_region"](state, np.random.default_rng(0)) == expected


@pytest.mark.parametrize("name", ["bald_region", "bald_lookahead"])
def test_region_rules_need_the_predictive_probability(name) -> None:
    state = _region_state()
    state.predictive_probability = None
    state.lookahead = _fake_lookahead(state.map_probability)
    with pytest.raises(ValueError, match=f"{name}.*predictive_probability"):
        POLICIES[name](state, np.random.default_rng(0))


def _error_map(total_error: float) -> np.ndarray:
    """A probability map with sum(min(q, 1 - q)) == total_error (q = 0.5 on 2 * total cells)."""
    q = np.zeros(256 * 256)
    q[: int(round(2 * total_error))] = 0.5
    return q.reshape(256, 256)


def test_bald_lookahead_minimises_the_expected_remaining_error() -> None:
    state = _region_state()
    # Candidates in bald_region order: MID (p 0.4), BIG (p 0.7), SMALL (p 0.5).
    errors = {
        (112, 60): (800.0, 800.0),  # (after a positive, after a negative click): E = 800
        # Unweighted mean 500 would win, p-weighted: 0.7 * 1000 + 0.3 * 0 = 700.
        (205, 205): (1000.0, 0.0),
        (22, 22): (600.0, 600.0),  # E = 600: the best, though SMALL has the least BALD sum
    }
    calls = []

    def lookahead(cell, label):
        calls.append((cell, label))
        return _error_map(errors[cell][1 - label])

    state.lookahead = _batched(lookahead)
    assert LOOKAHEAD_CANDIDATES == 3
    assert POLICIES["bald_lookahead"](state, np.random.default_rng(0)) == (22, 22)
    assert sorted(calls) == sorted((cell, label) for cell in errors for label in (0, 1))
    # A label mix-up (p weighting the negative click) would pick BIG: 0.3 * 1000 = 300.
    errors[(205, 205)] = (0.0, 1000.0)  # now E = 0.7 * 0 + 0.3 * 1000 = 300
    assert POLICIES["bald_lookahead"](state, np.random.default_rng(0)) == (205, 205)
    # Ties go to the first candidate (bald_region's choice).
    errors.update({cell: (5.0, 5.0) for cell in errors})
    assert POLICIES["bald_lookahead"](state, np.random.default_rng(0)) == (112, 60)


def test_bald_lookahead_tops_up_candidates_from_smoothed_bald() -> None:
    shape = (256, 256)
    probability = np.full(shape, 0.05)
    probability[30:41, 30:41] = 0.5  # one region, centre (35, 35), no BALD
    state = ClickState(
        probability,
        np.zeros(shape),
        _hot_pixel_and_plateau(),
        clicked=set(),
        predictive_probability=probability,
    )
    calls = []

    def lookahead(cell, label):
        calls.append(cell)
        return _error_map(0.0 if cell == (110, 160) else 50.0)

    state.lookahead = _batched(lookahead)
    assert POLICIES["bald_lookahead"](state, np.random.default_rng(0)) == (110, 160)
    candidates = list(dict.fromkeys(calls))
    assert len(candidates) == LOOKAHEAD_CANDIDATES
    assert candidates[:2] == [(35, 35), (110, 160)]  # the region, then the smoothed argmax
    assert candidates[2] in {(109, 160), (110, 159)}  # the next smoothed argmax


def test_bald_lookahead_needs_a_lookahead() -> None:
    state = _region_state()
    with pytest.raises(ValueError, match="bald_lookahead.*lookahead"):
        POLICIES["bald_lookahead"](state, np.random.default_rng(0))


# --- coordinates ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_hw", [(37, 91), (480, 640), (1, 5), (256, 256), (1000, 3)])
def test_grid_image_round_trips(image_hw) -> None:
    height, width = image_hw
    # grid -> image -> grid is the identity on every cell.
    rows, cols = np.mgrid[:256, :256]
    x, y = grid_to_image(rows, cols, image_hw)
    back_rows, back_cols = image_to_grid(x, y, image_hw)
    np.testing.assert_array_equal(back_rows, rows)
    np.testing.assert_array_equal(back_cols, cols)
    # grid_to_image inverts rescale_points (the stage-3 prompt-map convention).
    points = np.stack([x.ravel(), y.ravel()], axis=1)
    np.testing.assert_allclose(
        rescale_points(points, image_hw), np.stack([cols.ravel(), rows.ravel()], 1), atol=1e-9
    )
    # image -> grid -> image lands in the same cell, for every image pixel.
    ys, xs = np.mgrid[:height, :width]
    cell_rows, cell_cols = image_to_grid(xs, ys, image_hw)
    assert cell_rows.min() >= 0 and cell_rows.max() <= 255 and cell_cols.max() <= 255
    cx, cy = grid_to_image(cell_rows, cell_cols, image_hw)
    again = image_to_grid(cx, cy, image_hw)
    np.testing.assert_array_equal(again[0], cell_rows)
    np.testing.assert_array_equal(again[1], cell_cols)
    # The cell's centre lies within half a pixel (or half a cell) of the pixel's centre.
    assert np.all(np.abs(cx - xs) <= max(0.5, 0.5 * width / 256) + 1e-9)
    assert np.all(np.abs(cy - ys) <= max(0.5, 0.5 * height / 256) + 1e-9)


def test_coordinate_helpers_accept_scalars_and_clip_outside_points() -> None:
    x, y = grid_to_image(0, 255, (480, 640))
    assert isinstance(x, float) and isinstance(y, float)
    assert (x, y) == pytest.approx((255.5 * 640 / 256 - 0.5, 0.5 * 480 / 256 - 0.5))
    row, col = image_to_grid(x, y, (480, 640))
    assert (row, col) == (0, 255) and isinstance(row, int) and isinstance(col, int)
    assert image_to_grid(-10.0, 1e6, (480, 640)) == (255, 0)
