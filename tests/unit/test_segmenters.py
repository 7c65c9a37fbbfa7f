"""Base segmenters: registry, SAM (tiny random SAM on CPU) and random_walker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.tiny_sam import build_tiny_sam

from laplace_head.errors import LaplaceHeadError
from laplace_head.segmenters import (
    SEGMENTER_REGISTRY,
    build_segmenter,
    build_segmenter_from_settings,
)
from laplace_head.segmenters.random_walker import (
    RandomWalkerSegmenter,
    graph_laplacian,
    probability_to_logits,
)
from laplace_head.segmenters.sam import CHECKPOINTS_URL, SamCheckpointError, SamSegmenter
from laplace_head.util.devices import resolve_device


@pytest.fixture(scope="module")
def tiny_sam():
    return SamSegmenter(model=build_tiny_sam(seed=0), device="cpu")


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)


def _prompt(rng: np.random.Generator, k: int, hw=(50, 70)):
    points = rng.uniform(0, 1, (2 * k, 2)) * [hw[1] - 1, hw[0] - 1]
    return points, np.array([1] * k + [0] * k)


def _on_grid(logits: np.ndarray) -> np.ndarray:
    """SamPredictor's image-size logits resized to the 256 grid as SamSegmenter resizes them."""
    resized = F.interpolate(
        torch.as_tensor(logits)[None, None],
        (256, 256),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return resized[0, 0].numpy()


def test_registry_lists_backends_and_rejects_unknown():
    assert set(SEGMENTER_REGISTRY) == {"sam", "random_walker"}
    with pytest.raises(ValueError, match="random_walker, sam"):
        build_segmenter("medsam")
    with pytest.raises(ValueError, match="valid backends"):
        build_segmenter_from_settings("medsam")
    segmenter = build_segmenter_from_settings(
        "random_walker", random_walker_max_side=40, random_walker_beta=50
    )
    assert segmenter.info["max_side"] == 40 and segmenter.info["beta"] == 50


@pytest.mark.parametrize("backend", ["sam", "random_walker"])
def test_predict_before_set_image_raises(backend):
    segmenter = (
        SamSegmenter(model=build_tiny_sam(0), device="cpu")
        if backend == "sam"
        else RandomWalkerSegmenter()
    )
    with pytest.raises(RuntimeError, match="set_image"):
        segmenter.predict(np.array([[1.0, 2.0]]), np.array([1]))
    with pytest.raises(ValueError, match="uint8"):
        segmenter.set_image(np.zeros((8, 8, 3), dtype=np.float32))


def test_sam_matches_sam_predictor_reference(tiny_sam, image):
    """Our output = SamPredictor.predict(return_logits=True)'s best branch, resized to 256."""
    rng = np.random.default_rng(1)
    points, labels = _prompt(rng, 3)
    tiny_sam.set_image(image)
    logits, branch, scores = tiny_sam.predict(points, labels)
    masks, iou, _ = tiny_sam.predictor.predict(points, labels, return_logits=True)
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    assert len(scores) == 3 and branch == int(np.argmax(iou))
    np.testing.assert_allclose(scores, iou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, _on_grid(masks[branch]), atol=1e-5)


@pytest.mark.parametrize(
    ("low", "padded", "hw"),
    [(256, 1024, (480, 640)), (256, 1024, (1000, 333)), (256, 1024, (37, 50)), (32, 128, (50, 70))],
)
def test_the_resize_matrices_equal_the_interpolation_chain(low, padded, hw):
    """Step 4 as one matrix per axis (resize_matrix) = Sam.postprocess_masks' bilinear chain
    (up to the padded side, crop, to the image size) then the antialiased resize to 256, on
    random logits of a batch: downscaled (480 x 640, a tall 1000 x 333) and upscaled (37 x 50)
    to the grid, and the tiny SAM's 32-cell decoder."""
    from laplace_head.segmenters.sam import resize_matrix

    scale = padded / max(hw)
    size = (int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5))  # ResizeLongestSide's rounding
    logits = torch.randn(3, 1, low, low, generator=torch.Generator().manual_seed(0)) * 8
    up = F.interpolate(logits, (padded, padded), mode="bilinear", align_corners=False)
    full = F.interpolate(up[..., : size[0], : size[1]], hw, mode="bilinear", align_corners=False)
    reference = F.interpolate(
        full, (256, 256), mode="bilinear", align_corners=False, antialias=True
    )[:, 0]
    rows = resize_matrix(low, padded, size[0], hw[0])
    cols = resize_matrix(low, padded, size[1], hw[1])
    assert rows.shape == (256, low) and cols.shape == (256, low)
    np.testing.assert_allclose(rows @ logits[:, 0] @ cols.T, reference, rtol=0, atol=1e-5)


def test_the_post_processing_stays_float32_under_autocast(tiny_sam, image):
    """Stage 3 timed under bf16 autocast (bench/gpu_check.py) post-processes in float32: the
    same logits as without autocast, for the same decoder output."""
    tiny_sam.set_image(image)
    low_res = torch.randn(2, 1, *tiny_sam.mask_input_hw, generator=torch.Generator().manual_seed(4))
    plain = tiny_sam._postprocess(low_res)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = tiny_sam._postprocess(low_res)
    np.testing.assert_array_equal(autocast, plain)


def test_sam_mask_input_matches_sam_predictor_reference(tiny_sam, image):
    """predict_with_mask = SamPredictor.predict(mask_input=...)'s best branch: the previous
    low-res logits go into the prompt encoder, and the kept low-res logits come back."""
    rng = np.random.default_rng(3)
    points, labels = _prompt(rng, 2)
    tiny_sam.set_image(image)
    (first, _, _), low_res = tiny_sam.predict_with_mask(points[:1], labels[:1])
    assert low_res.shape == (1, *tiny_sam.mask_input_hw) == (1, 32, 32)
    (logits, branch, scores), next_low_res = tiny_sam.predict_with_mask(points, labels, low_res)
    masks, iou, low = tiny_sam.predictor.predict(
        points, labels, mask_input=low_res, return_logits=True
    )
    assert branch == int(np.argmax(iou))
    np.testing.assert_allclose(scores, iou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(next_low_res[0], low[branch], atol=1e-5)
    np.testing.assert_allclose(logits, _on_grid(masks[branch]), atol=1e-5)
    assert np.abs(logits - tiny_sam.predict(points, labels)[0]).max() > 1e-3  # the mask counts
    with pytest.raises(ValueError, match=r"mask_input must be finite \(1, 32, 32\)"):
        tiny_sam.predict_with_mask(points, labels, np.zeros((1, 256, 256)))


def test_random_walker_refuses_a_mask_input(image):
    segmenter = RandomWalkerSegmenter(max_side=16)
    segmenter.set_image(image)
    assert not segmenter.supports_mask_input
    with pytest.raises(ValueError, match="random_walker base segmenter takes no mask input"):
        segmenter.predict_with_mask(np.array([[3.0, 4.0]]), np.array([1]))


def test_sam_batch_equals_one_by_one_and_padding_would_not(tiny_sam, image):
    rng = np.random.default_rng(2)
    prompt_sets = [_prompt(rng, k) for k in (1, 3, 1, 2, 3)]
    tiny_sam.set_image(image)
    batched = tiny_sam.predict_batch(prompt_sets)
    for prompt_set, (logits, branch, scores) in zip(prompt_sets, batched):
        single_logits, single_branch, single_scores = tiny_sam.predict(*prompt_set)
        np.testing.assert_allclose(logits, single_logits, atol=1e-5)
        assert branch == single_branch
        np.testing.assert_allclose(scores, single_scores, atol=1e-6)
    # Why sets of different sizes are grouped instead of padded with label -1: SAM attends to
    # padding tokens, so padding changes the logits.
    points, labels = prompt_sets[0]
    padded = (np.concatenate([points, np.zeros((4, 2))]), np.concatenate([labels, [-1] * 4]))
    _, _, low_unpadded = tiny_sam.predictor.predict(points, labels, return_logits=True)
    _, _, low_padded = tiny_sam.predictor.predict(*padded, return_logits=True)
    assert np.abs(low_padded - low_unpadded).max() > 1e-3


def test_sam_batch_with_a_mask_input_equals_predict_with_mask(tiny_sam, image):
    rng = np.random.default_rng(3)
    tiny_sam.set_image(image)
    _, mask_input = tiny_sam.predict_with_mask(*_prompt(rng, 1))
    prompt_sets = [_prompt(rng, 2) for _ in range(4)]  # one group, as look-ahead candidates
    batched = tiny_sam.predict_batch(prompt_sets, mask_input=mask_input)
    for prompt_set, (logits, branch, scores) in zip(prompt_sets, batched):
        (single_logits, single_branch, single_scores), _ = tiny_sam.predict_with_mask(
            *prompt_set, mask_input
        )
        np.testing.assert_allclose(logits, single_logits, atol=1e-5)
        assert branch == single_branch
        np.testing.assert_allclose(scores, single_scores, atol=1e-6)
    # The mask input is used: without it the logits differ.
    assert np.abs(batched[0][0] - tiny_sam.predict(*prompt_sets[0])[0]).max() > 1e-3
    with pytest.raises(ValueError, match=r"mask_input must be finite"):
        tiny_sam.predict_batch(prompt_sets, mask_input=np.zeros((1, 4, 4)))
    walker = RandomWalkerSegmenter(max_side=16)
    walker.set_image(image)
    with pytest.raises(ValueError, match="random_walker base segmenter takes no mask input"):
        walker.predict_batch(prompt_sets, mask_input=mask_input)


def test_sam_handles_large_and_portrait_images(tiny_sam):
    rng = np.random.default_rng(3)
    for shape in [(300, 40, 3), (17, 23, 3)]:
        tiny_sam.set_image(rng.integers(0, 256, shape, dtype=np.uint8))
        logits, _, _ = tiny_sam.predict(*_prompt(rng, 2, shape[:2]))
        assert logits.shape == (256, 256) and np.isfinite(logits).all()


def test_sam_info_identifies_weights(tiny_sam):
    other = SamSegmenter(model=build_tiny_sam(seed=1), device="cpu")
    same = SamSegmenter(model=build_tiny_sam(seed=0), device="cpu")
    assert tiny_sam.info["name"] == "sam" and tiny_sam.info["checkpoint_md5"] is None
    assert tiny_sam.info["fingerprint"] == same.info["fingerprint"]
    assert tiny_sam.info["fingerprint"] != other.info["fingerprint"]


def test_missing_and_unreadable_checkpoint_fail_at_construction(tmp_path):
    missing = tmp_path / "sam_vit_b.pth"
    with pytest.raises(SamCheckpointError) as info:
        SamSegmenter(checkpoint=missing, model_type="vit_b", device="cpu")
    assert str(missing) in str(info.value) and CHECKPOINTS_URL in str(info.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SamCheckpointError, match="cannot be read") as info:
        SamSegmenter(checkpoint=garbage, model_type="vit_b", device="cpu")
    assert CHECKPOINTS_URL in str(info.value)


def test_model_type_mismatch_names_file_and_fix(tmp_path):
    tiny_checkpoint = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam(0).state_dict(), tiny_checkpoint)
    with pytest.raises(SamCheckpointError, match="does not match sam.model_type") as info:
        SamSegmenter(checkpoint=tiny_checkpoint, model_type="vit_b", device="cpu")
    assert str(tiny_checkpoint) in str(info.value) and CHECKPOINTS_URL in str(info.value)
    # A checkpoint of another official size is recognised from its encoder width, before the
    # (large) model is even built.
    vit_b_like = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, vit_b_like)
    with pytest.raises(SamCheckpointError, match="is a vit_b checkpoint.*model_type: vit_b"):
        SamSegmenter(checkpoint=vit_b_like, model_type="vit_h", device="cpu")
    with pytest.raises(ValueError, match="vit_h, vit_l, vit_b"):
        SamSegmenter(checkpoint=vit_b_like, model_type="vit_x", device="cpu")


def test_device_validation(monkeypatch):
    with pytest.raises(ValueError, match="auto, cuda, cpu"):
        resolve_device("tpu", "sam.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(LaplaceHeadError, match="sam.device.*sam.device: cpu"):
        resolve_device("cuda", "sam.device")


@pytest.mark.slow
def test_vit_b_checkpoint_loads_through_registry(tmp_path):
    """A ViT-B-shaped random checkpoint saved to disk loads and segments on the CPU."""
    from segment_anything import sam_model_registry

    checkpoint = tmp_path / "sam_vit_b_random.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), checkpoint)
    segmenter = SamSegmenter(checkpoint=checkpoint, model_type="vit_b", device="cpu")
    assert segmenter.info["model_type"] == "vit_b" and len(segmenter.info["checkpoint_md5"]) == 32
    rng = np.random.default_rng(0)
    segmenter.set_image(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    outputs = segmenter.predict_batch([_prompt(rng, 2, (120, 160)), _prompt(rng, 1, (120, 160))])
    assert [o[0].shape for o in outputs] == [(256, 256)] * 2
    assert all(np.isfinite(o[0]).all() and len(o[2]) == 3 for o in outputs)
    with pytest.raises(SamCheckpointError, match="is a vit_b checkpoint"):
        SamSegmenter(checkpoint=checkpoint, model_type="vit_l", device="cpu")


def _disk_image(height=60, width=90):
    """A bright ellipse on a dark, slightly noisy background, and its mask."""
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - 28) / 18.0) ** 2 + ((cols - 50) / 25.0) ** 2 <= 1.0
    rng = np.random.default_rng(0)
    image = np.where(mask[..., None], [200, 60, 40], [30, 80, 120]) + rng.normal(
        0, 6, (*mask.shape, 3)
    )
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("beta", [90.0, 2000.0])
def test_random_walker_segments_a_simple_shape(beta):
    image, mask = _disk_image()
    segmenter = RandomWalkerSegmenter(max_side=48, beta=beta)
    segmenter.set_image(image)
    points = np.array([[50, 28], [42, 22], [5, 5], [85, 55]], dtype=float)
    logits, branch, scores = segmenter.predict(points, np.array([1, 1, 0, 0]))
    assert logits.shape == (256, 256) and logits.dtype == np.float32 and branch == 0
    assert len(scores) == 1 and 0.5 <= scores[0] <= 1.0
    assert np.abs(logits).max() <= 9.22
    rows = np.minimum(((np.arange(256) + 0.5) * 60 / 256).astype(int), 59)
    cols = np.minimum(((np.arange(256) + 0.5) * 90 / 256).astype(int), 89)
    truth = mask[rows[:, None], cols[None, :]]
    predicted = logits > 0
    assert (predicted & truth).sum() / (predicted | truth).sum() > 0.8


def test_random_walker_is_deterministic():
    image, _ = _disk_image()
    points, labels = np.array([[50, 28], [5, 5], [70, 50]], float), np.array([1, 0, 0])
    outputs = []
    for _ in range(2):
        segmenter = RandomWalkerSegmenter(max_side=40)
        segmenter.set_image(image)
        outputs.append(segmenter.predict(points, labels))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    assert outputs[0][2] == outputs[1][2]
    fingerprints = {RandomWalkerSegmenter(beta=b).info["fingerprint"] for b in (10, 20, 10)}
    assert len(fingerprints) == 2


def test_the_walkers_graph_laplacian_is_scikit_images():
    """graph_laplacian on a hand-checked 2 x 2 image (edge weights exp(-beta g^2 / (10 std
    sqrt(C))) + 1e-10, degrees on the diagonal) and on a photo-like image, where it equals
    the matrix scikit-image's random_walker builds (its private _build_laplacian)."""
    from skimage.segmentation import random_walker_segmentation as skimage_walker

    image = np.array([[[0.0], [1.0]], [[0.0], [0.5]]])  # nodes 0 1 / 2 3
    laplacian = graph_laplacian(image, beta=10.0).toarray()
    scale = -10.0 / (10 * image.std())
    w01, w23, w02, w13 = np.exp(scale * np.array([1.0, 0.25, 0.0, 0.25])) + 1e-10
    expected = np.array(
        [
            [w01 + w02, -w01, -w02, 0],
            [-w01, w01 + w13, 0, -w13],
            [-w02, 0, w02 + w23, -w23],
            [0, -w13, -w23, w13 + w23],
        ]
    )
    np.testing.assert_allclose(laplacian, expected, rtol=1e-15, atol=0)
    photo = _disk_image()[0].astype(np.float64) / 255.0
    theirs = skimage_walker._build_laplacian(
        photo[:, :, None, :], np.ones(3), None, 2000.0, multichannel=True
    )
    assert abs(graph_laplacian(photo, 2000.0) - theirs).max() < 1e-14


def _walker_prompt_sets(image: np.ndarray, n: int, seed: int):
    """``n`` growing prompt sets of random points, alternately positive and negative."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    points = rng.uniform([0, 0], [width, height], size=(n, 2))
    labels = np.arange(n) % 2 == 0
    return [(points[: k + 1], labels[: k + 1].astype(int)) for k in range(1, n)]


def _scikit_image_p(segmenter, seeds: np.ndarray) -> np.ndarray:
    """The reference: scikit-image's random_walker(mode="bf") foreground probability of the
    segmenter's small grid and ``seeds`` at its beta, clipped to [0, 1]."""
    from skimage.segmentation import random_walker

    theirs = random_walker(
        segmenter._small,
        seeds,
        beta=segmenter.beta,
        mode="bf",
        return_full_prob=True,
        channel_axis=-1,
    )[0]
    return np.clip(theirs, 0.0, 1.0)


def test_the_kept_factorization_solves_the_walker_as_scikit_image_does():
    """The bf mode's WalkerSystem (one factorization per image, kept columns, one refinement)
    against scikit-image's random_walker(mode="bf") on a noisy photo-like image with 2-12
    seeds: p agrees to 1e-5 (both residuals at float64 rounding; the gap is the conditioning
    of the weak edges), and its own residual L_UU p_U + L_US p_S is below 1e-12."""
    rng = np.random.default_rng(3)
    image = np.clip(_disk_image()[0] + rng.normal(0, 25, (60, 90, 3)), 0, 255).astype(np.uint8)
    segmenter = RandomWalkerSegmenter(max_side=90)
    segmenter.set_image(image)
    laplacian = graph_laplacian(segmenter._small, segmenter.beta)
    compared = 0
    for points, labels in _walker_prompt_sets(image, 12, seed=5):
        seeds = segmenter._seed_labels(points, labels)
        if set(np.unique(seeds)) != {0, 1, 2}:
            continue
        mine = segmenter._foreground_probability(seeds)
        np.testing.assert_allclose(mine, _scikit_image_p(segmenter, seeds), rtol=0, atol=1e-5)
        unseeded = seeds.ravel() == 0
        residual = (laplacian @ np.where(seeds.ravel() == 1, 1.0, mine.ravel()))[unseeded]
        assert np.abs(residual).max() < 1e-12
        compared += 1
    assert compared >= 8
    assert segmenter._system is not None  # factorized once, on the first prompt set


def test_the_walkers_kept_columns_are_bounded_and_do_not_change_p(monkeypatch):
    """A WalkerSystem keeps the columns KEPT_COLUMN_BYTES holds (the least recently used go);
    a prompt set predicted with its columns evicted and solved again gives p bit for bit."""
    from laplace_head.segmenters import random_walker as walker_module

    image, _ = _disk_image()
    n_pixels = 32 * 48  # the small grid at max_side 48
    monkeypatch.setattr(walker_module, "KEPT_COLUMN_BYTES", 4 * 8 * n_pixels)  # 4 columns
    monkeypatch.setattr(walker_module, "MIN_KEPT_COLUMNS", 4)
    segmenter = RandomWalkerSegmenter(max_side=48)
    segmenter.set_image(image)
    assert segmenter._small.shape[:2] == (32, 48)
    points, labels = np.array([[50, 28], [5, 5], [70, 50]], float), np.array([1, 0, 0])
    first = segmenter.predict(points, labels)[0]
    for other, other_labels in _walker_prompt_sets(image, 8, seed=2):
        segmenter.predict(other, other_labels)
    assert len(segmenter._system._columns) <= 9  # at most the last set's 8 seeds and the anchor
    np.testing.assert_array_equal(segmenter.predict(points, labels)[0], first)


def test_a_grid_too_large_to_keep_its_columns_is_solved_by_scikit_image(monkeypatch):
    """Above MIN_KEPT_COLUMNS columns in KEPT_COLUMN_BYTES (large random_walker_max_side), every
    prompt set is solved afresh by scikit-image's random_walker, with no factorization kept."""
    from laplace_head.segmenters import random_walker as walker_module

    monkeypatch.setattr(walker_module, "KEPT_COLUMN_BYTES", 8 * 32 * 48 * 63)  # 63 columns
    image, _ = _disk_image()
    segmenter = RandomWalkerSegmenter(max_side=48)
    segmenter.set_image(image)
    points, labels = np.array([[50, 28], [5, 5], [70, 50]], float), np.array([1, 0, 0])
    seeds = segmenter._seed_labels(points, labels)
    np.testing.assert_array_equal(
        segmenter._foreground_probability(seeds), _scikit_image_p(segmenter, seeds)
    )
    assert segmenter._system is None


def test_a_failed_kept_solve_falls_back_to_scikit_images(monkeypatch, caplog):
    """Should the small seed system of the kept factorization ever be singular, the prompt set
    is solved afresh by scikit-image (a warning says so), not lost."""
    from laplace_head.segmenters import random_walker as walker_module

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    image, _ = _disk_image()
    segmenter = RandomWalkerSegmenter(max_side=48)
    segmenter.set_image(image)
    points, labels = np.array([[50, 28], [5, 5], [70, 50]], float), np.array([1, 0, 0])
    seeds = segmenter._seed_labels(points, labels)
    monkeypatch.setattr(walker_module.np.linalg, "solve", singular)
    with caplog.at_level("WARNING", logger=walker_module.LOGGER.name):
        probability = segmenter._foreground_probability(seeds)
    np.testing.assert_array_equal(probability, _scikit_image_p(segmenter, seeds))
    assert "solving afresh" in caplog.text


def test_random_walker_degenerate_inputs():
    segmenter = RandomWalkerSegmenter(max_side=16)
    segmenter.set_image(np.full((40, 40, 3), 128, dtype=np.uint8))  # constant image
    logits, _, _ = segmenter.predict(np.array([[10, 10], [30, 30]], float), np.array([1, 0]))
    assert np.isfinite(logits).all() and logits[20, 20] > 0 > logits[235, 235]
    # Positive and negative points on the same small-grid pixel: the positive wins; with no
    # negative seed left every pixel is foreground.
    logits, _, _ = segmenter.predict(np.array([[10, 10], [10.4, 10.4]]), np.array([1, 0]))
    assert (logits > 9).all()
    with pytest.raises(ValueError, match="labels must be 1"):
        segmenter.predict(np.array([[1.0, 1.0]]), np.array([2]))
    with pytest.raises(ValueError, match="max_side"):
        RandomWalkerSegmenter(max_side=4)


def test_probability_to_logits_is_clipped():
    logits = probability_to_logits(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(logits, [-9.2102, 0.0, 9.2102], atol=1e-3)
