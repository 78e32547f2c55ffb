"""Config keys of SCORE: the Mask2Former keys it builds on, and ``MODEL.SCORE``.

``add_maskformer2_config`` adds the keys of Mask2Former / FC-CLIP with their
names, meanings and defaults. ``add_score_config`` adds ``MODEL.SCORE``, the
keys of SCORE.md section 11 and the switches of the paper's ablations
(Tables 2 to 6). Neither changes a key that detectron2 already has: where the
recipe needs another value (solver, input size, detections per image), the
yaml in ``configs/`` says so.
"""

from __future__ import annotations

import os

from detectron2.config import CfgNode as CN

__all__ = ["DEPRECATED_KEYS", "add_maskformer2_config", "add_score_config", "get_score_cfg"]

# Mask2Former keys that SCORE never reads; merging them logs a warning and ignores them.
DEPRECATED_KEYS = (
    "INPUT.COLOR_AUG_SSD",
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA",
    "INPUT.SIZE_DIVISIBILITY",
    "MODEL.MASK_FORMER.ENC_LAYERS",
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE",
    # Panoptic inference is not implemented; its keys in MASK_FORMER.TEST are ignored.
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON",
    "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD",
    "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD",
)


def add_maskformer2_config(cfg: CN) -> None:
    """The Mask2Former keys SCORE reads (as in its ``add_maskformer2_config``), with its defaults.

    Mask2Former's keys for its semantic augmentation and for panoptic inference
    (``INPUT.COLOR_AUG_SSD``, ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``,
    ``INPUT.SIZE_DIVISIBILITY``, ``MASK_FORMER.TEST.PANOPTIC_ON``,
    ``OBJECT_MASK_THRESHOLD``, ``OVERLAP_THRESHOLD``) and the ones its multi-scale
    decoder ignores (``MASK_FORMER.ENC_LAYERS``, ``MASK_FORMER.TRANSFORMER_IN_FEATURE``)
    are left out: SCORE does instance and semantic segmentation (with the
    instance recipe's large-scale jitter) and the multi-scale decoder only. They
    are registered as deprecated (``DEPRECATED_KEYS``), so that a yaml that sets
    them (a config.yaml that detectron2 dumped before they were removed) still
    loads, with a warning that names each ignored key. The names of parts
    (mapper, pixel and transformer decoder) default to SCORE's registered ones,
    those ``configs/Base-SCORE.yaml`` names; detectron2's own keys that choose
    parts (``MODEL.META_ARCHITECTURE``, ``MODEL.BACKBONE.NAME``,
    ``MODEL.SEM_SEG_HEAD.NAME``) keep detectron2's defaults, and the yaml names
    SCORE's.
    """
    for key in DEPRECATED_KEYS:
        cfg.register_deprecated_key(key)
    # Data: the training mapper, by name (score/data/mappers.py); "score_instance_lsj" is
    # the instance recipe's large-scale jitter (Mask2Former's default names its semantic mapper).
    cfg.INPUT.DATASET_MAPPER_NAME = "score_instance_lsj"
    # Large-scale jitter: square target size (px) and random scale range.
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    # Solver.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of embeddings (queries, level embeddings)
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # lr multiplier of parameters under `backbone.`

    cfg.MODEL.MASK_FORMER = CN()
    # Loss weights and deep supervision.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1  # cross-entropy weight of the void class
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # Transformer decoder: attention heads M and FFN width.
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    # Dropout of the pixel decoder's deformable encoder layers. As in Mask2Former,
    # the transformer decoder ignores it and runs without dropout.
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    # Number of predictions: DEC_LAYERS - 1 decoder layers plus one on the initial queries.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    # Pre-norm instead of post-norm decoder layers.
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    # Query width C and number of queries Q.
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # 1x1 input projections of the decoder even when the feature width equals C.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Registry name of the transformer decoder (score/modeling/transformer_decoder/).
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "SCOREMultiScaleMaskedTransformerDecoder"
    # Padding of the batch (px): the padded size is a multiple of it; -1 takes
    # the backbone's size_divisibility (Mask2Former's sentinel). 0, which meant
    # the backbone's value in earlier SCORE configs, still does (with a warning).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Point-sampled mask losses (PointRend): points per mask, oversampling k, importance beta.
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Inference tasks, with Mask2Former's meaning; at least one must be on (checked at
    # model build). SCORE's defaults are instance only: a semantic yaml turns SEMANTIC_ON
    # on (configs/score_landdiscover_semantic.yaml).
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
    # Semantic inference at the original image size (mask logits resized first) instead
    # of at the padded input size with the class map resized afterwards; as in
    # Mask2Former, INSTANCE_ON implies it.
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # Pixel decoder: width of the per-pixel mask embeddings, number of deformable encoder
    # layers, and its registry name (score/modeling/pixel_decoder/).
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    # Backbone levels the deformable encoder attends to, its sampling points per level and head,
    # and its heads.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # FFN width of the deformable encoder layers (Mask2Former hard-codes 1024).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024
    # Multi-scale deformable attention: "auto" (fused kernel when one is
    # available on the device, else PyTorch), "pytorch" (the reference).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_IMPL = "auto"


def add_score_config(cfg: CN) -> None:
    """``MODEL.SCORE``: SCORE.md section 11 and the ablation switches."""
    cfg.MODEL.SCORE = CN()

    # --- Instance and semantic branches: one open_clip ConvNeXt CLIP (SCORE.md 4.1, 7.2).
    # open_clip model name of the frozen image + text towers.
    cfg.MODEL.SCORE.CLIP_MODEL_NAME = "convnext_large_d_320"
    # Its weights: an open_clip pretrained tag, a local file, or "hf-hub:ORG/REPO[/FILE]".
    cfg.MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS = "laion2b_s29b_b131k_ft_soup"
    # Width D of the CLIP joint embedding. It must equal the open_clip model's
    # embed_dim (checked when the model is built); paper symbol D = 768.
    cfg.MODEL.SCORE.EMBED_DIM = 768

    # --- Context branch: the frozen remote-sensing CLIP image tower (SCORE.md 10).
    # Registry name of the context encoder (score/modeling/context/).
    cfg.MODEL.SCORE.CONTEXT_ENCODER_NAME = "RemoteCLIPContextEncoder"
    # open_clip model name of the context CLIP (paper Table 3 swaps its weights).
    cfg.MODEL.SCORE.RSCLIP_MODEL_NAME = "ViT-L-14"
    # Its weights: a local file (relative paths are resolved against the project
    # root, not the working directory), an open_clip tag, or
    # "hf-hub:ORG/REPO[/FILE]"; "hf-hub:chendelong/RemoteCLIP" fetches
    # RemoteCLIP-<RSCLIP_MODEL_NAME>.pt from the authors' hub repository.
    cfg.MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS = "RemoteCLIP/RemoteCLIP-ViT-L-14.pt"
    # QuickGELU (x * sigmoid(1.702 x)) in the context tower's MLPs, as the
    # authors run it; False builds plain GELU as RemoteCLIP's usage notes do.
    cfg.MODEL.SCORE.RSCLIP_QUICK_GELU = True
    # dtype of the context tower: "float16" (the authors' loader), "bfloat16",
    # "float32", or "auto": float16 on CUDA, float32 on CPU (for CPUs that emulate
    # float16 products). All but float16 change the numbers slightly; which is
    # fastest depends on the CPU (docs/BENCHMARKS.md, docs/PREDICT.md "Speed on a
    # CPU"). The recipes keep float16.
    cfg.MODEL.SCORE.RSCLIP_DTYPE = "float16"
    # Side (px) of the square the normalised batch is resized to for the
    # context tower (bilinear, align_corners False); 224 gives a 16 x 16 grid.
    cfg.MODEL.SCORE.CONTEXT_INPUT_SIZE = 224

    # Random initialisation of both CLIPs instead of loading weights: only for
    # tests and benchmarks; logged as a warning.
    cfg.MODEL.SCORE.RANDOM_INIT_CLIP = False
    # Autocast of the frozen ConvNeXt CLIP image tower (its features and the
    # out-of-vocabulary embedding of pooled masks): "none" (its own float32) or
    # "bf16" (bfloat16 autocast on the model's device, CUDA or CPU). Its outputs
    # are cast back to float32 for the trainable head. A speed option, not in the
    # paper (docs/BENCHMARKS.md); the context tower's precision is RSCLIP_DTYPE.
    cfg.MODEL.SCORE.FROZEN_TOWERS_AUTOCAST = "none"
    # Cross- and self-attention of the transformer decoder through PyTorch's fused
    # scaled_dot_product_attention (need_weights=False) instead of the authors'
    # explicit softmax (False). Faster, but the masks can differ: docs/DESIGN.md,
    # "Numeric differences from the authors' computation".
    cfg.MODEL.SCORE.DECODER_FUSED_ATTENTION = False
    # Modules whose forward runs through torch.compile (inductor, weights frozen
    # as constants) when called without autograd, i.e. at inference: any of
    # "backbone" (the frozen ConvNeXt CLIP trunk), "context" (the frozen context
    # tower) and "pixel_decoder" (its deformable sampling stays eager). Each is
    # compiled on its first such call (tens of seconds to minutes on a CPU, where
    # inductor needs a C++ compiler), once more for a new input size, and again
    # when its weights change. Close to the eager outputs, not equal, so off in
    # the recipes; 1.01 to 1.05 x for the whole model on our CPU
    # (docs/BENCHMARKS.md).
    cfg.MODEL.SCORE.COMPILE_AT_INFERENCE = []
    # Folder for the on-disk text-classifier cache ("" = no disk cache). The
    # cache is keyed by text model, weights and prompts.
    cfg.MODEL.SCORE.TEXT_CLASSIFIER_CACHE_DIR = ""

    # --- Open-vocabulary ensemble (SCORE.md 7.3). Exponent of the
    # out-vocabulary probability for seen (alpha) and unseen (beta) classes.
    # The per-target values the authors used are metadata of the test splits.
    cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_ALPHA = 0.4
    cfg.MODEL.SCORE.GEOMETRIC_ENSEMBLE_BETA = 0.8
    # Apply the out-vocabulary term only to queries whose mask has a positive pixel.
    cfg.MODEL.SCORE.ENSEMBLE_ON_VALID_MASK = False
    # Source of the out-vocabulary term (paper Table 6): "clip" (the ConvNeXt
    # CLIP, default) or "rsclip" (the context CLIP with its own text tower).
    cfg.MODEL.SCORE.OUT_VOCAB_SOURCE = "clip"
    # Initial in-vocabulary logit scale, log(1 / 0.07); exp() is capped at 100.
    cfg.MODEL.SCORE.LOGIT_SCALE_INIT = 2.6592600846290588

    # --- Region-Aware Integration (SCORE.md 5; paper Table 2 "RAI").
    cfg.MODEL.SCORE.RAI = CN()
    cfg.MODEL.SCORE.RAI.ENABLED = True
    # Adaptive dilation of the mask logits: "gumbel" (the authors': a
    # Gumbel-softmax mixture over KERNEL_CANDIDATES, then the argmax kernel) or
    # "paper" (k = 3 + clamp(delta, 0, MAX_DELTA), see docs/DESIGN.md).
    cfg.MODEL.SCORE.RAI.DILATION = "gumbel"
    # Candidate max-pool kernel sizes (odd, px of the mask-logit map).
    cfg.MODEL.SCORE.RAI.KERNEL_CANDIDATES = [3, 5, 7, 9, 11, 13]
    # Gumbel-softmax temperature tau.
    cfg.MODEL.SCORE.RAI.GUMBEL_TAU = 2.0
    # Length of the Gumbel phase in training iterations (the authors count
    # 2500 prediction-head calls = 250 iterations of 10 predictions).
    cfg.MODEL.SCORE.RAI.GUMBEL_WARMUP_ITERS = 250
    # Slope of the soft pooling weights sigmoid(s * (M' - 0.5)) in the Gumbel phase.
    cfg.MODEL.SCORE.RAI.SOFT_POOL_SLOPE = 10.0
    # "paper" dilation: initial delta and its upper clamp.
    cfg.MODEL.SCORE.RAI.DELTA_INIT = 1.0
    cfg.MODEL.SCORE.RAI.MAX_DELTA = 10.0
    # What RAI pools (paper Table 4): "regional" (the dense context map),
    # "cls" (the global context token for every query) or "patch" (the patch
    # tokens of context layer PATCH_LAYER).
    cfg.MODEL.SCORE.RAI.CONTEXT_SOURCE = "regional"
    # Block index (0-based) of the context tower whose patch tokens "patch" pools.
    cfg.MODEL.SCORE.RAI.PATCH_LAYER = 22
    # Initial value of the learnable integration weight lambda.
    cfg.MODEL.SCORE.RAI.LAMBDA_INIT = 0.1
    # Integration stack: l encoder layers of width D (paper symbol l).
    cfg.MODEL.SCORE.RAI.NUM_LAYERS = 5
    cfg.MODEL.SCORE.RAI.NHEADS = 8
    cfg.MODEL.SCORE.RAI.DIM_FEEDFORWARD = 2048
    # Dropout of the integration layers (PyTorch's default, independent of MASK_FORMER.DROPOUT).
    cfg.MODEL.SCORE.RAI.DROPOUT = 0.1

    # --- Global Context Adaptation (SCORE.md 6; paper Tables 2 and 5).
    cfg.MODEL.SCORE.GCA = CN()
    # "mha" (default), "add" (T + g), "concat" ([T, g] -> Linear(2D, D), our
    # documented choice) or "none" (T-hat = T).
    cfg.MODEL.SCORE.GCA.MODE = "mha"
    cfg.MODEL.SCORE.GCA.NHEADS = 8

    # --- Training vocabulary (score/vocabulary.py). Empty: the classes of
    # DATASETS.TRAIN[0]. It sets the training classifier (K classes), so a
    # training run refuses one that does not list the classes of DATASETS.TRAIN in
    # their order; in evaluation it only decides which test classes are "seen"
    # (SCORE.md 7.3).
    cfg.MODEL.SCORE.TRAIN_VOCABULARY = []

    # --- Evaluation (DATASETS.md "Evaluation protocol"): implementation of COCO
    # mask AP. "faster_coco_eval" (C++, the same numbers as pycocotools; the
    # faster one in tools/bench/benchmark_coco_eval.py), "pycocotools" (the official
    # API) or "detectron2" (its C++ COCOeval_opt; needs detectron2's extension).
    cfg.TEST.COCO_EVAL_BACKEND = "faster_coco_eval"

    # --- Dataset validation (score/data/validation.py), run on every training
    # and test split before the model is built. False: a bad record (missing,
    # truncated or wrongly sized image, annotation without a usable mask) stops
    # the run with the list of all of them; True: they are dropped and counted
    # (not the annotations of a test split, nor problems of the file itself).
    cfg.DATASETS.DROP_INVALID = False
    # Folder of the validation cache (keyed by the annotation file and the size
    # and mtime of every image); "" turns the cache off.
    cfg.DATASETS.VALIDATION_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "score", "validation")

    # --- Reliability of inputs and checkpoints (docs/RELIABILITY.md).
    # 8-bit stretch of training / test images with more than 8 bits per channel
    # (16-bit PNG or TIFF), the one of GeoTIFF input (score/data/image_io.py):
    # "percentile" (per band, 2nd..98th percentile to 0..255) or "dtype"
    # (0..max of the integer type, e.g. / 65535).
    cfg.INPUT.HIGH_BIT_DEPTH_SCALING = "percentile"
    # Evaluation (train_net.py --eval-only) and tools/predict.py refuse a
    # MODEL.WEIGHTS checkpoint that leaves trainable parameters of the model
    # unset or has entries of other shapes, and list them. True: load it
    # anyway (those parameters keep their random initialisation). Training
    # always loads partially and logs a table of what was and was not loaded.
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False


def get_score_cfg() -> CN:
    """detectron2's defaults plus both functions above."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_maskformer2_config(cfg)
    add_score_config(cfg)
    return cfg
