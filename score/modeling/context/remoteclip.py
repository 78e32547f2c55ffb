"""RemoteCLIP ViT context encoder with dense output (SCORE.md 10).

Shorthand: B batch, W tower width (1024 for ViT-L/14), D joint embedding
width (768), S context input side (CONTEXT_INPUT_SIZE, px), h x w patch
grid (S / patch, 16 x 16 at 224 / 14), L = 1 + h * w tokens, N text prompts.

The context branch is the image tower of RemoteCLIP (Liu et al. 2024, a CLIP
ViT-L/14 fine-tuned on remote-sensing image-text pairs, released as an
open_clip state dict), frozen. A plain CLIP forward only gives the pooled
[CLS]; SCORE also needs a dense map, obtained the way MaskCLIP-style dense
CLIP features are: the last transformer block is run in "value-only" mode,
where every token goes through the value and output projections of the
attention without attending to the others, so that each output token stays
tied to its own image patch while landing in the joint space after ln_post
and the projection. As in the authors' implementation, the residual of that
block is the [CLS] token's block input, added to every token, and the
[CLS] token run through the same path is the global context g.

Precision: the authors convert this tower to float16 (open_clip's
``convert_weights_to_lp``: convolution, linear and attention weights and the
projection in fp16, LayerNorms and embeddings in fp32, with LayerNorms that
compute in fp32). Every op used here has a float16 kernel on CPU too (checked
with torch 2.14), so the tower runs in float16 on any device; the
positional embedding stays a float32 parameter and is cast when added.
open_clip's blocks are batch-first, so in eval mode their attention would take
PyTorch's fused MultiheadAttention fast path; the authors' (seq, batch, width)
blocks never do, and in float16 the two differ by 5e-4 to 1e-3 per block. In a
reduced-precision tower the blocks therefore run with the fast path off, which
is bit-identical to the authors' seq-first computation (docs/DESIGN.md,
"Numeric differences").
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn

from ..clip_weights import create_clip_model
from ..inference_compile import InferenceCompiled
from . import CONTEXT_ENCODER_REGISTRY, ContextFeatures

__all__ = ["RemoteCLIPContextEncoder", "resolve_context_dtype", "value_only_block"]


# RSCLIP_DTYPE -> open_clip precision.
_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def value_only_block(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """Run an open_clip ViT block in value-only mode: tokens (B, L, W) -> (B, L, W).

    y = ln_1(x); t = out_proj(v_proj(y)) + x_cls, where v_proj is the value
    third of the attention's input projection and x_cls = x[:, :1] the [CLS]
    token's block input (added to every token instead of each token's own);
    then the usual MLP residual t = t + mlp(ln_2(t)).
    """
    y = block.ln_1(x)
    width = x.shape[-1]
    attn = block.attn
    value = F.linear(y, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
    t = block.ls_1(attn.out_proj(value)) + x[:, :1]
    return t + block.ls_2(block.mlp(block.ln_2(t)))


@contextlib.contextmanager
def _mha_fast_path(enabled: bool) -> Iterator[None]:
    """PyTorch's MultiheadAttention fast path on or off inside the block (restored after)."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def resolve_context_dtype(dtype: str, device: str) -> str:
    """RSCLIP_DTYPE "auto" -> "float16" on CUDA, "float32" elsewhere; other values unchanged.

    CPUs without native float16 matrix products emulate them (the tower runs
    about 1.5 times slower in float16 than in float32 there), so "auto" trades
    the authors' float16 numerics for speed on CPU only. Resolved when the
    model is built, for MODEL.DEVICE: a model moved to another device keeps it.
    """
    if dtype != "auto":
        return dtype
    return "float16" if torch.device(device).type == "cuda" else "float32"


@CONTEXT_ENCODER_REGISTRY.register()
class RemoteCLIPContextEncoder(nn.Module):
    """Frozen RemoteCLIP (open_clip ViT) image tower with global and dense output; see the module doc."""

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        weights: str,
        quick_gelu: bool,
        dtype: str,
        input_size: int,
        random_init: bool,
        patch_layers: Sequence[int] = (),
        compile_at_inference: bool = False,
    ):
        """
        Args:
            model_name: open_clip name of an OpenAI-layout ViT (``ViT-L-14``).
            weights: its weights (local file, open_clip tag or ``hf-hub:``
                reference; ``hf-hub:ORG/REPO`` fetches ``RemoteCLIP-<model_name>.pt``).
            quick_gelu: QuickGELU instead of GELU in the MLPs (the authors' setting).
            dtype: "float16" (the authors'), "bfloat16" or "float32".
            input_size: side S (px) the batch is resized to.
            random_init: random weights instead of loading (tests only).
            patch_layers: 0-based block indices whose patch tokens are kept in
                ``ContextFeatures.patch_layers``.
            compile_at_inference: without autograd, run the tower through
                ``torch.compile`` (``InferenceCompiled``; close to, not equal to, eager).
        """
        super().__init__()
        if dtype not in _PRECISIONS:
            raise ValueError(f"MODEL.SCORE.RSCLIP_DTYPE must be one of {sorted(_PRECISIONS)}, got {dtype!r}")
        self.clip_model = create_clip_model(
            model_name,
            weights,
            random_init=random_init,
            force_quick_gelu=quick_gelu,
            hub_default_filename=f"RemoteCLIP-{model_name}.pt",
            precision=_PRECISIONS[dtype],
            config_key="MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS",
        )
        visual = self.clip_model.visual
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or not all(isinstance(b, ResidualAttentionBlock) for b in blocks):
            raise ValueError(
                f"open_clip model {model_name!r} is not an OpenAI-layout ViT (MODEL.SCORE.RSCLIP_MODEL_NAME)."
            )
        bad_layers = [i for i in patch_layers if not 0 <= i < len(blocks)]
        if bad_layers:
            raise ValueError(f"Patch layers {bad_layers} out of range for a tower of {len(blocks)} blocks.")
        self.model_name = model_name
        self.input_size = input_size
        self.patch_layers = sorted(set(patch_layers))
        self.dtype = getattr(torch, dtype)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self._compiled_tensors = (
            InferenceCompiled(self._tensors, self, "the context tower") if compile_at_inference else None
        )
        self.eval()

    @classmethod
    def from_config(cls, cfg) -> dict:
        rai = cfg.MODEL.SCORE.RAI
        return {
            "model_name": cfg.MODEL.SCORE.RSCLIP_MODEL_NAME,
            "weights": cfg.MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS,
            "quick_gelu": cfg.MODEL.SCORE.RSCLIP_QUICK_GELU,
            "dtype": resolve_context_dtype(cfg.MODEL.SCORE.RSCLIP_DTYPE, cfg.MODEL.DEVICE),
            "input_size": cfg.MODEL.SCORE.CONTEXT_INPUT_SIZE,
            "random_init": cfg.MODEL.SCORE.RANDOM_INIT_CLIP,
            "patch_layers": [rai.PATCH_LAYER] if rai.CONTEXT_SOURCE == "patch" else [],
            "compile_at_inference": "context" in cfg.MODEL.SCORE.COMPILE_AT_INFERENCE,
        }

    def train(self, mode: bool = True) -> RemoteCLIPContextEncoder:
        # Frozen module with no trainable part: it stays in eval mode (norms, drop-path,
        # dropout) whatever mode the model is put in.
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        """Width D of the joint embedding."""
        return self.clip_model.visual.output_dim

    @property
    def grid_size(self) -> tuple:
        """(h, w) of the dense output at the configured input size."""
        patch_h, patch_w = self.clip_model.visual.patch_size
        return self.input_size // patch_h, self.input_size // patch_w

    def _positional_embedding(self, grid: tuple) -> Tensor:
        """(1 + h * w, W) positional embedding, bicubic-resized when the grid is not the model's."""
        pos = self.clip_model.visual.positional_embedding
        model_grid = tuple(self.clip_model.visual.grid_size)
        if tuple(grid) == model_grid:
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        patch_pos = patch_pos.reshape(1, *model_grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos])

    def forward(self, images: Tensor) -> ContextFeatures:
        """(B, 3, H, W) normalised, padded batch -> global (B, D) and dense (B, D, h, w) context.

        Outputs have the tower's dtype (float16 by default). Autocast is
        switched off inside so that this dtype is the one configured.
        """
        tensors = self._tensors
        if self._compiled_tensors is not None and not torch.is_grad_enabled():
            tensors = self._compiled_tensors
        # Switched outside the (possibly compiled) tensor function: a switch inside breaks its graph.
        with torch.no_grad(), _mha_fast_path(self.clip_model.visual.conv1.weight.dtype == torch.float32):
            global_embed, dense, patch_layers = tensors(images)
        return ContextFeatures(global_embed=global_embed, dense=dense, patch_layers=patch_layers)

    def _tensors(self, images: Tensor) -> Tuple[Tensor, Tensor, Dict[int, Tensor]]:
        """The forward's tensors: global (B, D), dense (B, D, h, w) and the kept patch layers."""
        visual = self.clip_model.visual
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = F.interpolate(
                images.float(), size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
            x = visual.conv1(x.to(visual.conv1.weight.dtype))  # (B, W, h, w)
            batch, width, grid_h, grid_w = x.shape
            x = x.flatten(2).transpose(1, 2)  # (B, h * w, W)
            cls_token = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
            x = torch.cat([cls_token, x], dim=1)  # (B, L, W)
            x = x + self._positional_embedding((grid_h, grid_w)).to(x.dtype)
            x = visual.ln_pre(x)

            blocks = visual.transformer.resblocks
            kept: Dict[int, Tensor] = {}
            for index, block in enumerate(blocks[:-1]):
                x = block(x)
                if index in self.patch_layers:
                    kept[index] = x
            x = value_only_block(blocks[-1], x)
            if len(blocks) - 1 in self.patch_layers:
                kept[len(blocks) - 1] = x

            tokens = self._project(x)  # (B, L, D)
            dense = self._to_map(tokens[:, 1:], grid_h, grid_w)
            patch_layers = {i: self._to_map(self._project(t)[:, 1:], grid_h, grid_w) for i, t in kept.items()}
        return tokens[:, 0], dense, patch_layers

    def _project(self, x: Tensor) -> Tensor:
        """Tokens (B, L, W) -> (B, L, D): ln_post, then the tower's projection."""
        visual = self.clip_model.visual
        return visual.ln_post(x) @ visual.proj

    @staticmethod
    def _to_map(patch_tokens: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """(B, h * w, D) -> (B, D, h, w), a permuted view of the tokens, not a contiguous copy.

        The authors pool this view; a contiguous copy holds the same values, but
        the pooling einsum then sums them in another order and rounds differently
        in the last bit (docs/DESIGN.md, "Numeric differences").
        """
        return patch_tokens.reshape(patch_tokens.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def encode_text(self, prompts: List[str]) -> Tensor:
        """Prompts -> (N, D) embeddings of the context CLIP's text tower, not normalised."""
        tokens = self.tokenizer(prompts).to(self.clip_model.logit_scale.device)
        return self.clip_model.encode_text(tokens)
