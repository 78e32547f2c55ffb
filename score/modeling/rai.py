"""Region-Aware Integration (RAI): mix regional scene context into the query class embeddings.

SCORE.md section 5 (paper Sec. 3.2). For each query, the mask logits are
dilated by a max-pool (adaptive region formation), the context map of the
remote-sensing CLIP is pooled inside the dilated mask (regional context
extraction), and the result is added to the class embedding with a learnable
weight before a stack of transformer encoder layers run on each query alone
(integration). The choices the spec leaves open are in docs/DESIGN.md ("RAI").
The max-pool dilations (score/modeling/dilation.py) and the one-token encoder
stack (score/modeling/single_token_encoder.py) are fast paths kept beside it.

Shorthand: B batch, Q queries, D joint embedding width, n kernel candidates,
H x W mask-logit size, h x w context grid (16 x 16 for ViT-L/14 at 224).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from score.modeling.dilation import dilate, mix_dilations
from score.modeling.open_vocab import mask_pool
from score.modeling.single_token_encoder import single_token_encoder
from score.profiling import profiled

if TYPE_CHECKING:
    from score.modeling.context import ContextFeatures

__all__ = ["RegionAwareIntegration", "build_rai"]

logger = logging.getLogger(__name__)

_DILATION_MODES = ("gumbel", "paper")
_CONTEXT_SOURCES = ("regional", "cls", "patch")


class RegionAwareIntegration(nn.Module):
    """RAI of SCORE.md 5: class embeddings V (B, Q, D) -> context-aware V-hat (B, Q, D).

    Training-only state: ``iteration`` counts training iterations (advanced by
    :meth:`step`, once per iteration, by the meta-architecture); the Gumbel
    phase lasts its first ``warmup_iters``. The argmax kernel is stored in
    ``fixed_kernel`` (0 until then) at the first dilation after the phase,
    that is after the optimizer step of the phase's last iteration, as the
    authors pick it at the first head call after the warm-up; so the kernel is
    chosen once, as in SCORE.md 5.1, from the fully warmed-up logits. Both are
    buffers, hence saved in checkpoints.
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int,
        dilation: str = "gumbel",
        kernel_candidates: Sequence[int] = (3, 5, 7, 9, 11, 13),
        gumbel_tau: float = 2.0,
        warmup_iters: int = 250,
        soft_pool_slope: float = 10.0,
        delta_init: float = 1.0,
        max_delta: float = 10.0,
        context_source: str = "regional",
        patch_layer: int = 22,
        lambda_init: float = 0.1,
        num_layers: int = 5,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        """
        Args:
            embed_dim: width D of the class embeddings and of the context features.
            dilation: "gumbel" (Gumbel-softmax mixture over ``kernel_candidates``
                during the warm-up, then the argmax kernel) or "paper"
                (k = 3 + clamp(delta, 0, max_delta), interpolated between odd kernels).
            kernel_candidates: odd max-pool kernel sizes of the "gumbel" mode (px of the mask logits).
            gumbel_tau: Gumbel-softmax temperature.
            warmup_iters: length of the Gumbel phase, in training iterations.
            soft_pool_slope: s of the soft pooling weights sigmoid(s * (M' - 0.5)).
            delta_init: initial delta of the "paper" mode.
            max_delta: upper clamp of delta in the "paper" mode.
            context_source: what is pooled: "regional" (dense context map), "cls"
                (the global embedding for every query) or "patch" (patch tokens of
                context block ``patch_layer``).
            patch_layer: 0-based context block whose patch tokens "patch" pools.
            lambda_init: initial value of the integration weight lambda.
            num_layers: number l of integration encoder layers.
            nheads: attention heads of each encoder layer.
            dim_feedforward: FFN width of each encoder layer.
            dropout: dropout of the encoder layers.
        """
        super().__init__()
        if dilation not in _DILATION_MODES:
            raise ValueError(f"MODEL.SCORE.RAI.DILATION must be one of {_DILATION_MODES}, got {dilation!r}")
        if context_source not in _CONTEXT_SOURCES:
            raise ValueError(
                f"MODEL.SCORE.RAI.CONTEXT_SOURCE must be one of {_CONTEXT_SOURCES}, got {context_source!r}"
            )
        kernel_candidates = tuple(int(k) for k in kernel_candidates)
        if dilation == "gumbel":
            if not kernel_candidates:
                raise ValueError("MODEL.SCORE.RAI.KERNEL_CANDIDATES must not be empty, got []")
            bad = [k for k in kernel_candidates if k < 1 or k % 2 == 0]
            if bad:
                raise ValueError(
                    f"MODEL.SCORE.RAI.KERNEL_CANDIDATES must hold positive odd kernel sizes, "
                    f"got {list(kernel_candidates)} (bad: {bad})"
                )
            if gumbel_tau <= 0:
                raise ValueError(f"MODEL.SCORE.RAI.GUMBEL_TAU must be > 0, got {gumbel_tau}")
        if warmup_iters < 0:
            raise ValueError(f"MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS must be >= 0, got {warmup_iters}")
        if dilation == "paper" and max_delta < 0:
            raise ValueError(f"MODEL.SCORE.RAI.MAX_DELTA must be >= 0, got {max_delta}")

        self.embed_dim = embed_dim
        self.dilation = dilation
        self.kernel_candidates = kernel_candidates
        self.gumbel_tau = gumbel_tau
        self.warmup_iters = warmup_iters
        self.soft_pool_slope = soft_pool_slope
        self.max_delta = max_delta
        self.context_source = context_source
        self.patch_layer = patch_layer
        # The "cls" source uses the global embedding for every query: no region
        # is formed, so the mask logits are not dilated.
        self.forms_regions = context_source != "cls"

        # Only the parameters that the chosen modes use exist, so that every
        # parameter of the model can receive a gradient.
        if self.forms_regions and dilation == "gumbel":
            self.kernel_logits = nn.Parameter(torch.empty(len(kernel_candidates)).uniform_(-0.5, 0.5))
        elif self.forms_regions:
            self.delta = nn.Parameter(torch.tensor(float(delta_init)))
        self.lambda_weight = nn.Parameter(torch.full((1,), float(lambda_init)))
        layer = nn.TransformerEncoderLayer(
            d_model=embed_dim,
            nhead=nheads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("fixed_kernel", torch.zeros((), dtype=torch.long))
        # Host copies of the two buffers: reading a CUDA buffer in every head
        # call would synchronise the device 10 times per iteration. They are
        # refreshed by step() and whenever a state dict is loaded.
        self._host_iteration = 0
        self._host_fixed_kernel = 0

    @classmethod
    def from_config(cls, cfg, embed_dim: int) -> dict:
        rai = cfg.MODEL.SCORE.RAI
        return {
            "embed_dim": embed_dim,
            "dilation": rai.DILATION,
            "kernel_candidates": list(rai.KERNEL_CANDIDATES),
            "gumbel_tau": rai.GUMBEL_TAU,
            "warmup_iters": rai.GUMBEL_WARMUP_ITERS,
            "soft_pool_slope": rai.SOFT_POOL_SLOPE,
            "delta_init": rai.DELTA_INIT,
            "max_delta": rai.MAX_DELTA,
            "context_source": rai.CONTEXT_SOURCE,
            "patch_layer": rai.PATCH_LAYER,
            "lambda_init": rai.LAMBDA_INIT,
            "num_layers": rai.NUM_LAYERS,
            "nheads": rai.NHEADS,
            "dim_feedforward": rai.DIM_FEEDFORWARD,
            "dropout": rai.DROPOUT,
        }

    # ------------------------------------------------------------------ warm-up state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_iteration = int(self.iteration)
        self._host_fixed_kernel = int(self.fixed_kernel)

    def step(self) -> None:
        """Advance the warm-up counter by one training iteration (called once its forward is done)."""
        self.iteration.add_(1)
        self._host_iteration += 1

    def _fix_kernel_if_due(self) -> None:
        """After the Gumbel phase, store the argmax kernel once, at the first dilation that follows it.

        Not in :meth:`step`: the meta-architecture calls that after the
        forward, before the backward and the optimizer step of the same
        iteration, so the phase's last update would be ignored.
        """
        if self._uses_gumbel and not self._host_fixed_kernel and self._host_iteration >= self.warmup_iters:
            kernel = self._argmax_kernel()
            self.fixed_kernel.fill_(kernel)
            self._host_fixed_kernel = kernel
            logger.info(
                "RAI: Gumbel phase over after %d iterations; dilation kernel fixed to %d",
                self._host_iteration,
                kernel,
            )

    @property
    def _uses_gumbel(self) -> bool:
        return self.forms_regions and self.dilation == "gumbel"

    @property
    def in_gumbel_phase(self) -> bool:
        """True while training in "gumbel" mode and fewer than ``warmup_iters`` iterations have passed."""
        return self.training and self._uses_gumbel and self._host_iteration < self.warmup_iters

    def _argmax_kernel(self) -> int:
        return self.kernel_candidates[int(self.kernel_logits.detach().argmax())]

    def current_kernel(self) -> int:
        """Kernel of the fixed path: the one fixed at the end of the phase, else the current argmax."""
        return self._host_fixed_kernel or self._argmax_kernel()

    def _paper_kernel(self) -> Tensor:
        """Real-valued kernel size k = 3 + clamp(delta, 0, max_delta) (scalar tensor)."""
        return 3.0 + self.delta.clamp(0.0, self.max_delta)

    @torch.no_grad()
    def summary(self) -> Dict[str, float]:
        """Loggable scalars (names prefixed "rai/") for the trainer's event storage."""
        out = {
            "rai/iteration": float(self._host_iteration),
            "rai/in_gumbel_phase": float(self.in_gumbel_phase),
            "rai/lambda": float(self.lambda_weight),
        }
        if self._uses_gumbel:
            out["rai/kernel"] = float(self.current_kernel())
            probs = self.kernel_logits.softmax(dim=0).tolist()
            for kernel, prob in zip(self.kernel_candidates, probs):
                out[f"rai/kernel_prob_k{kernel}"] = prob
        elif self.forms_regions:
            out["rai/kernel"] = float(self._paper_kernel())
            out["rai/delta"] = float(self.delta)
        return out

    # ------------------------------------------------------------------ forward

    def dilate(self, mask_logits: Tensor) -> Tuple[Tensor, bool]:
        """Adaptive region formation (SCORE.md 5.1): M (B, Q, H, W) -> (M' (B, Q, H, W), soft pooling?)."""
        if self.dilation == "gumbel":
            if self.in_gumbel_phase:
                weights = F.gumbel_softmax(self.kernel_logits, tau=self.gumbel_tau, hard=False)
                return mix_dilations(mask_logits, weights, self.kernel_candidates), True
            self._fix_kernel_if_due()
            return dilate(mask_logits, self.current_kernel()).detach(), False
        # "paper": interpolate between the two odd kernels around the real k so
        # that delta gets a gradient (docs/DESIGN.md, RAI).
        kernel = self._paper_kernel()
        k_lo = 3 + 2 * math.floor((float(kernel.detach()) - 3.0) / 2.0)
        t = (kernel - k_lo) / 2.0
        dilated = (1.0 - t) * dilate(mask_logits, k_lo) + t * dilate(mask_logits, k_lo + 2)
        return dilated, self.training

    def _context_map(self, context: ContextFeatures) -> Tensor:
        """The (B, D, h, w) map that is pooled: context source "regional" or "patch"."""
        if self.context_source == "regional":
            return context.dense
        if self.patch_layer not in context.patch_layers:
            raise KeyError(
                f"MODEL.SCORE.RAI.PATCH_LAYER = {self.patch_layer} but the context encoder returned "
                f"patch tokens of layers {sorted(context.patch_layers)}"
            )
        return context.patch_layers[self.patch_layer]

    def regional_context(self, dilated: Tensor, soft: bool, context: ContextFeatures, dtype) -> Tensor:
        """Regional context extraction (SCORE.md 5.2): M' (B, Q, H, W) -> F_region (B, Q, D) in ``dtype``."""
        features = self._context_map(context)
        if soft:
            # The pooling weights carry the gradient to M' (and the kernel
            # logits or delta): pool in float32, as the authors do in the phase.
            pooled = mask_pool(features.float(), dilated, soft_slope=self.soft_pool_slope)
        else:
            # Afterwards the authors pool in the context tower's dtype (fp16 by
            # default); the hard weights carry no gradient (SCORE.md 10).
            pooled = mask_pool(features, dilated)
        return pooled.to(dtype)

    @profiled("score.rai")
    def forward(self, class_embed: Tensor, mask_logits: Tensor, context: ContextFeatures) -> Tensor:
        """V (B, Q, D), mask logits M (B, Q, H, W) and the context features -> V-hat (B, Q, D)."""
        if self.forms_regions:
            dilated, soft = self.dilate(mask_logits)
            region = self.regional_context(dilated, soft, context, class_embed.dtype)
            if self.training and self._uses_gumbel and not soft:
                # After the Gumbel phase the kernel logits no longer shape the output,
                # but DistributedDataParallel (detectron2 builds it without
                # find_unused_parameters) fails at the next iteration unless every
                # trainable parameter gets a gradient: give them an exact zero one.
                region = region + 0.0 * self.kernel_logits.sum().to(region.dtype)
        else:
            region = context.global_embed.to(class_embed.dtype)[:, None, :].expand_as(class_embed)
        x = class_embed + self.lambda_weight * region
        b, q, d = x.shape
        # Each query is its own sequence of length 1 (SCORE.md 5.3), so attention reduces to its
        # value path (score/modeling/single_token_encoder.py): same output, fewer matmuls.
        return single_token_encoder(self.encoder, x.reshape(b * q, 1, d)).reshape(b, q, d)


def build_rai(cfg, embed_dim: int) -> Optional[RegionAwareIntegration]:
    """RAI from ``cfg.MODEL.SCORE.RAI``, or None when ``MODEL.SCORE.RAI.ENABLED`` is False."""
    if not cfg.MODEL.SCORE.RAI.ENABLED:
        return None
    return RegionAwareIntegration(cfg, embed_dim)
