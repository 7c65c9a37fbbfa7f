"""A tiny random SAM for tests and benches (``from helpers.tiny_sam import build_tiny_sam``).

Built from segment_anything's own classes, so :class:`laplace_head.segmenters.sam.SamSegmenter`
runs its production code path on it; only the size and the weights differ from the official
models. Never used by the workflow itself.
"""

from __future__ import annotations

from functools import partial

import torch

from laplace_head.segmenters.sam import SamSegmenter


def build_tiny_sam(seed: int = 0, img_size: int = 64) -> torch.nn.Module:
    """A tiny SAM from segment_anything's own classes with random weights.

    Same architecture family as the official models (ViT encoder with windowed + global
    attention and relative positions, prompt encoder, two-way-transformer mask decoder with three
    multimask outputs) at a few ten-thousand parameters; ``img_size`` replaces 1024. Never used
    by the workflow itself. The global RNG state is left untouched.
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    patch_size, embed_dim, prompt_dim = 8, 32, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch_size,
                embed_dim=embed_dim,
                depth=2,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=4,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(img_size // patch_size, img_size // patch_size),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


class CountingSam(SamSegmenter):
    """A SamSegmenter over the tiny SAM whose image-encoder calls are counted."""

    def __init__(self) -> None:
        super().__init__(model=build_tiny_sam(seed=0), device="cpu")
        self.encoder_calls = 0
        encoder = self.model.image_encoder
        original_forward = encoder.forward

        def counted_forward(x):
            self.encoder_calls += 1
            return original_forward(x)

        encoder.forward = counted_forward
