"""The ``sam`` base segmenter: a frozen Segment Anything Model behind :class:`BaseSegmenter`.

How logits are produced, per image and prompt set
-------------------------------------------------
1. ``set_image`` runs SAM's image encoder once (``SamPredictor.set_image``: longest side resized
   to 1024, normalised, padded).
2. The prompt sets of the image are decoded against that one embedding. Prompt sets with the
   same number of points are stacked into one batch and decoded in one call (the same
   prompt-encoder + mask-decoder calls as ``SamPredictor.predict_torch``). Padding shorter sets
   with ``label = -1`` points is **not** used: SAM's two-way transformer attends to every token,
   so extra "not a point" tokens change the logits (by ~30 % of their range on a random tiny SAM,
   see ``tests/unit/test_segmenters.py``), whereas batching equal-length sets is exact. Stage 3
   decodes an image's prompt sets so; the interactive look-ahead decodes its candidates so (the
   same earlier clicks plus one point each: one group, with ``predict_batch``'s ``mask_input``
   fed to every set when the predictor feeds SAM its previous logits).
3. ``multimask_output=True``; the branch with the highest predicted IoU is kept and its index and
   all three predicted IoUs are returned.
4. The kept branch's 256 x 256 low-resolution logits are post-processed to the original image
   size with ``Sam.postprocess_masks`` (bilinear up to 1024, crop the padding, bilinear to
   H x W) - exactly what ``SamPredictor.predict(return_logits=True)`` returns - and then resized
   to 256 x 256 with bilinear interpolation (``align_corners=False``, ``antialias=True``, i.e.
   area-aware when downscaling and plain bilinear when upscaling). Only the kept branch is
   post-processed. Each step is linear and separable, so the chain is computed as one
   (256, 256) matrix per axis for the official models (:func:`resize_matrix`), equal to it to
   float32 rounding, with no H x W plane.

:meth:`~laplace_head.segmenters.base.BaseSegmenter.predict_with_mask` is the same decode with
SAM's previous low-resolution logits as the prompt encoder's mask input (``SamPredictor``'s
``mask_input``), returning the kept branch's low-resolution logits to feed back next time: the
interactive protocol of RITM. Stage 3 never feeds a mask.

Checkpoints are read with ``torch.load(map_location="cpu", weights_only=True)`` into the model
that ``segment_anything.sam_model_registry[model_type]`` builds, so a checkpoint saved on a GPU
also loads on a CPU-only machine and nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from laplace_head.errors import LaplaceHeadError
from laplace_head.segmenters.base import BaseSegmenter, Prediction
from laplace_head.settings import GRID_SIZE
from laplace_head.util.atomic import file_md5, json_dumps
from laplace_head.util.devices import resolve_device
from laplace_head.util.seeding import stable_hash

LOGGER = logging.getLogger(__name__)

CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
MODEL_TYPES = ("vit_h", "vit_l", "vit_b")
# Image-encoder width of each official model type (image_encoder.pos_embed is (1, 64, 64, C)).
_EMBED_DIM_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}
# Bump when the logits post-processing changes, so cached logits are recomputed (not for a change
# of float rounding only: the per-axis matrices of resize_matrix compute the same map as version
# 1's interpolation chain, to float32 rounding).
POSTPROCESS_VERSION = 1


def resize_matrix(low: int, padded: int, size: int, original: int) -> torch.Tensor:
    """(GRID_SIZE, low) float32 matrix of step 4 along one axis (see the module docstring):
    bilinear from the decoder's ``low`` cells up to SAM's ``padded`` input side, the first
    ``size`` of them (the resized image without padding), bilinear to the ``original`` side,
    then bilinear with antialias to the grid, all ``align_corners=False``.

    Every step is linear and works on each axis alone, so the whole post-processing of
    (B, low_h, low_w) logits is ``rows @ logits @ cols^T``: no full-size plane, ~6x faster on a
    CPU for a 480 x 640 image. The columns are the steps' own ``F.interpolate`` calls on the
    unit vectors (as ``Sam.postprocess_masks`` and the 256 resize run them), so the product
    equals that chain to float32 rounding (tests/unit/test_segmenters.py). The unit vectors lie
    along the last axis: PyTorch's antialiased resize of a tensor one cell wide differs."""
    x = torch.eye(low, dtype=torch.float32)[:, None, None, :]
    x = F.interpolate(x, (1, padded), mode="bilinear", align_corners=False)[..., :size]
    x = F.interpolate(x, (1, original), mode="bilinear", align_corners=False)
    x = F.interpolate(x, (1, GRID_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x[:, 0, 0, :].T.contiguous()


class SamCheckpointError(LaplaceHeadError):
    """The SAM checkpoint is missing, unreadable or does not match ``sam.model_type``."""


def _guess_model_type(state_dict: Mapping[str, Any]) -> str | None:
    pos_embed = state_dict.get("image_encoder.pos_embed")
    if isinstance(pos_embed, torch.Tensor) and pos_embed.ndim == 4:
        return _EMBED_DIM_TO_TYPE.get(int(pos_embed.shape[-1]))
    return None


def load_sam_model(model_type: str, checkpoint: str | os.PathLike) -> torch.nn.Module:
    """Build ``sam_model_registry[model_type]`` and load ``checkpoint`` into it (on the CPU).

    Raises
    ------
    ValueError
        For a ``model_type`` outside vit_h | vit_l | vit_b.
    SamCheckpointError
        If the file is missing or unreadable, or its weights do not fit ``model_type``.
    """
    from segment_anything import sam_model_registry

    if model_type not in MODEL_TYPES:
        raise ValueError(f"sam.model_type = {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    path = Path(checkpoint)
    where = f"Official checkpoints: {CHECKPOINTS_URL}"
    if not path.is_file():
        raise SamCheckpointError(
            f"SAM checkpoint {str(path)!r} (sam.checkpoint) does not exist. Download the "
            f"{model_type} checkpoint and set sam.checkpoint to its path. {where}"
        )
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        raise SamCheckpointError(
            f"SAM checkpoint {str(path)!r} (sam.checkpoint) cannot be read as a PyTorch state "
            f"dict ({type(exc).__name__}: {exc}). Re-download it. {where}"
        ) from exc
    if not isinstance(state_dict, Mapping):
        raise SamCheckpointError(
            f"SAM checkpoint {str(path)!r} holds a {type(state_dict).__name__}, not a state "
            f"dict. Use an official SAM checkpoint. {where}"
        )
    guessed = _guess_model_type(state_dict)
    if guessed is not None and guessed != model_type:
        raise SamCheckpointError(
            f"SAM checkpoint {str(path)!r} is a {guessed} checkpoint but sam.model_type = "
            f"{model_type!r}; set sam.model_type: {guessed} or use the {model_type} checkpoint. "
            f"{where}"
        )
    model = sam_model_registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0][:300]
        raise SamCheckpointError(
            f"SAM checkpoint {str(path)!r} does not match sam.model_type = {model_type!r} "
            f"({summary}). Set sam.model_type to the checkpoint's type (vit_h, vit_l or vit_b). "
            f"{where}"
        ) from exc
    return model


def _state_dict_md5(model: torch.nn.Module) -> str:
    digest = hashlib.md5()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class SamSegmenter(BaseSegmenter):
    """Frozen SAM (``SamPredictor``) returning the highest-IoU branch's logits at 256 x 256.

    Parameters
    ----------
    checkpoint
        Path of an official SAM checkpoint for ``model_type``. Read here, so a bad file fails
        before any image is processed.
    model_type
        vit_h | vit_l | vit_b (must match the checkpoint; default vit_h). With ``model=`` it is
        only a label (default ``"custom"``).
    device
        auto | cuda | cpu.
    model
        An already built ``segment_anything.modeling.Sam`` (e.g. a tiny random one in tests)
        used instead of a checkpoint; its weights are hashed for :attr:`info`.
    """

    name = "sam"
    supports_mask_input = True
    batch_equals_single = False  # one prompt-encoder + mask-decoder call per batch

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        model_type: str | None = None,
        device: str = "auto",
        model: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        from segment_anything import SamPredictor

        if (checkpoint is None) == (model is None):
            raise ValueError("give exactly one of checkpoint= (a file) or model= (a built Sam)")
        self.device = resolve_device(device, "sam.device")
        if model is None:
            model_type = model_type or "vit_h"
            model = load_sam_model(model_type, checkpoint)
            self._checkpoint = str(checkpoint)
            self._checkpoint_md5: str | None = file_md5(checkpoint)
            self._weights_md5: str | None = None
        else:
            model_type = model_type or "custom"
            self._checkpoint = None
            self._checkpoint_md5 = None
            self._weights_md5 = _state_dict_md5(model)
        self.model_type = model_type
        self.model = model.to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.predictor = SamPredictor(self.model)
        # (sizes, (rows, cols)) of the last image's resize_matrix pair
        self._resize: tuple[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] | None = None
        identity = {
            "name": self.name,
            "model_type": self.model_type,
            "checkpoint_md5": self._checkpoint_md5,
            "weights_md5": self._weights_md5,
            "postprocess_version": POSTPROCESS_VERSION,
        }
        self._fingerprint = f"{stable_hash(json_dumps(identity)):016x}"
        LOGGER.info(
            "SAM %s loaded on %s (%s)", model_type, self.device, self._checkpoint or "in-memory"
        )

    @property
    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "checkpoint": self._checkpoint,
            "checkpoint_md5": self._checkpoint_md5,
            "weights_md5": self._weights_md5,
            "device": str(self.device),
            "multimask_output": True,
            "branch_selection": "highest predicted IoU",
            "logits_resize": "postprocess_masks to original size, then bilinear antialias to 256",
            "fingerprint": self._fingerprint,
        }

    def _check_image_hw(self, height: int, width: int) -> None:
        """Refuse an image whose shorter side SAM's resize (the longer side to
        ``transform.target_length``, 1024 for the official models, sides rounded) makes 0."""
        target = int(self.predictor.transform.target_length)
        resized = self.predictor.transform.get_preprocess_shape(height, width, target)
        if min(resized) < 1:
            longer, shorter = max(height, width), min(height, width)
            smallest = math.ceil(longer / (2 * target))
            raise ValueError(
                f"image of {height}x{width} pixels is too thin for SAM: its resize to a longer "
                f"side of {target} makes the shorter side {shorter * target / longer:.3g} "
                f"pixels, which rounds to 0 ({resized[0]}x{resized[1]}). With a longer side of "
                f"{longer} the shorter side must be at least {smallest} pixels (longer side / "
                f"{2 * target}); crop or pad the image"
            )

    def _set_image(self, image_rgb: np.ndarray) -> None:
        with torch.inference_mode():
            self.predictor.set_image(image_rgb, image_format="RGB")

    def _predict_batch(self, prompt_sets: list[tuple[np.ndarray, np.ndarray]]) -> list[Prediction]:
        return self._decode_groups(prompt_sets, None)

    def _predict_batch_with_mask(
        self, prompt_sets: list[tuple[np.ndarray, np.ndarray]], mask_input: np.ndarray
    ) -> list[Prediction]:
        return self._decode_groups(prompt_sets, self._mask_tensor(mask_input))

    def _decode_groups(
        self, prompt_sets: list[tuple[np.ndarray, np.ndarray]], mask: torch.Tensor | None
    ) -> list[Prediction]:
        """Decode the sets in groups of equal point count (one call per group), in order;
        ``mask`` ((1, 1, h, w) or None) is fed with every set."""
        results: list[Prediction | None] = [None] * len(prompt_sets)
        groups: dict[int, list[int]] = {}
        for index, (points, _) in enumerate(prompt_sets):
            groups.setdefault(len(points), []).append(index)
        for indices in groups.values():
            points = np.stack([prompt_sets[i][0] for i in indices])
            labels = np.stack([prompt_sets[i][1] for i in indices])
            masks = None if mask is None else mask.expand(len(indices), -1, -1, -1)
            for index, prediction in zip(indices, self._decode(points, labels, masks)[0]):
                results[index] = prediction
        return results  # type: ignore[return-value]

    @property
    def mask_input_hw(self) -> tuple[int, int]:
        """(h, w) of the low-resolution logits and of ``mask_input`` (256 x 256 for SAM)."""
        height, width = self.model.prompt_encoder.mask_input_size
        return int(height), int(width)

    def _predict_with_mask(
        self, points_xy: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[Prediction, np.ndarray]:
        masks = None if mask_input is None else self._mask_tensor(mask_input)
        predictions, low_res = self._decode(points_xy[None], labels[None], masks)
        return predictions[0], low_res[0].float().cpu().numpy()

    def _mask_tensor(self, mask_input: np.ndarray) -> torch.Tensor:
        """A checked (1, h, w) ``mask_input`` as a (1, 1, h, w) tensor on the model's device."""
        given = np.asarray(mask_input) if isinstance(mask_input, np.ndarray) else None
        kind = "" if given is None else given.dtype.kind
        array = given.astype(np.float32) if kind in ("f", "i", "u") else None
        if array is None or array.shape != (1, *self.mask_input_hw) or not np.isfinite(array).all():
            got = (
                f"a {type(mask_input).__name__}"
                if given is None
                else f"shape {given.shape}, dtype {given.dtype}"
                + ("" if array is None or np.isfinite(array).all() else ", non-finite values")
            )
            raise ValueError(
                f"mask_input must be finite (1, {self.mask_input_hw[0]}, "
                f"{self.mask_input_hw[1]}) low-resolution logits (a previous prediction's "
                f"low_res_logits), a float NumPy array; got {got}"
            )
        return torch.as_tensor(array, device=self.device)[None]

    def _decode(
        self, points_xy: np.ndarray, labels: np.ndarray, masks: torch.Tensor | None = None
    ) -> tuple[list[Prediction], torch.Tensor]:
        """Decode B prompt sets of N points each: (B, N, 2) points, (B, N) labels, optionally
        (B, 1, h, w) mask inputs; the predictions and the kept branches' (B, 1, h, w)
        low-resolution logits."""
        predictor, model = self.predictor, self.model
        coords = predictor.transform.apply_coords(points_xy.astype(np.float64), self.image_hw)
        with torch.inference_mode():
            coords_t = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)
            sparse, dense = model.prompt_encoder(
                points=(coords_t, labels_t), boxes=None, masks=masks
            )
            low_res, iou = model.mask_decoder(
                image_embeddings=predictor.features,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            best = iou.argmax(dim=1)
            kept = low_res[torch.arange(len(best), device=low_res.device), best][:, None]
            logits_256 = self._postprocess(kept)
        scores = iou.float().cpu().numpy()
        predictions = [
            (logits_256[i], int(best[i]), [float(s) for s in scores[i]])
            for i in range(len(points_xy))
        ]
        return predictions, kept

    def _postprocess(self, low_res: torch.Tensor) -> np.ndarray:
        """(B, 1, 256, 256) decoder logits -> (B, 256, 256) float32 at the image's 256 grid:
        ``rows @ logits @ cols^T`` with the image's :func:`resize_matrix` per axis."""
        rows, cols = self._resize_matrices(*low_res.shape[-2:])
        # float32 even under a caller's autocast (bench/gpu_check.py times stage 3 in bf16)
        with torch.autocast(low_res.device.type, enabled=False):
            resized = rows @ low_res[:, 0].float() @ cols.T
        return resized.cpu().numpy()

    def _resize_matrices(self, low_h: int, low_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (256, low_h) row and (256, low_w) column :func:`resize_matrix` of the current
        image for decoder logits of ``low_h x low_w``, kept until either size changes."""
        height, width = self.image_hw
        input_h, input_w = self.predictor.input_size
        key = (height, width, input_h, input_w, low_h, low_w)
        if self._resize is None or self._resize[0] != key:
            padded = self.model.image_encoder.img_size
            rows, cols = (
                resize_matrix(low, padded, size, original).to(self.device)
                for low, size, original in ((low_h, input_h, height), (low_w, input_w, width))
            )
            self._resize = (key, (rows, cols))
        return self._resize[1]
