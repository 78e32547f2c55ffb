"""Training and evaluation loop of SCORE: detectron2's ``DefaultTrainer`` with the authors' recipe.

What differs from detectron2's defaults (SCORE.md 8, Mask2Former's train_net):

* optimizer: AdamW (or SGD) with per-parameter hyper-parameters: the lr of
  ``backbone.*`` times SOLVER.BACKBONE_MULTIPLIER, weight decay
  SOLVER.WEIGHT_DECAY_NORM on normalisation layers and SOLVER.WEIGHT_DECAY_EMBED
  on embeddings; frozen parameters are left out;
* "full_model" gradient clipping: the norm of all gradients together is
  clipped (detectron2 only clips per parameter);
* data: the training mapper named by INPUT.DATASET_MAPPER_NAME, detectron2's
  resize-only mapper for testing, ``InstanceSegEvaluator`` (evaluator_type
  "coco") or ``SemSegMIoUEvaluator`` ("sem_seg") with seen / unseen flags of
  the test vocabulary against the training one;
* ``test`` switches the model's vocabulary to each test dataset's classes;
* on a machine without CUDA, AMP is turned off and the model runs on the CPU
  (logged once) instead of failing;
* a hook logs the model's RAI state (warm-up iteration, kernel, lambda).

The learning-rate schedule (WarmupMultiStepLR) and checkpointing are
detectron2's; the RAI warm-up counter is a buffer of the model, so the
checkpointer saves and restores it with the weights. Resuming is exact (a
resumed run follows the uninterrupted run's losses): the trainer's state also
holds the optimizer (detectron2 v0.6's ``DefaultTrainer`` leaves it out), the
Python / NumPy / torch RNG states and the training sampler's seed; the
sampler restarts at the position the checkpoint's iteration implies
(:class:`score.data.samplers.ResumableTrainingSampler`). Exact with
DATALOADER.NUM_WORKERS 0, in one process and without ASPECT_RATIO_GROUPING
(whose buckets hold drawn images across iterations); otherwise the images
follow the same stream, but the augmentation randomness of data-loader
workers and of other ranks is not restored.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import weakref
from collections import OrderedDict
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from score.checkpoint import PartialCheckpointError, SCORECheckpointer
from score.data.labels import LabelEncoding
from score.data.mappers import build_test_mapper, build_train_mapper
from score.data.samplers import ResumableTrainingSampler
from score.data.validation import validate_dataset
from score.evaluation import InstanceSegEvaluator, SemSegMIoUEvaluator
from score.vocabulary import check_train_vocabulary, dataset_classes, seen_flags, train_vocabulary

from .preflight import check_training_config, config_differences

__all__ = [
    "NORM_MODULE_TYPES",
    "RAISummaryHook",
    "Trainer",
    "adapt_cfg_to_device",
    "build_optimizer",
    "optimizer_param_groups",
    "rng_states",
    "set_rng_states",
    "test_seen_flags",
    "with_full_model_gradient_clipping",
]

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,  # detectron2's NaiveSyncBatchNorm and FrozenBatchNorm2d's trainable cousins
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Parameters that are embeddings although they are not held by an nn.Embedding
# (Swin / ViT position tables, as in Mask2Former's optimizer).
_EMBEDDING_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def optimizer_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
) -> list[dict[str, Any]]:
    """Parameter groups of Mask2Former's optimizer, merged by equal hyper-parameters.

    Every trainable parameter appears once (shared ones too); frozen ones
    (requires_grad False) are left out. Mask2Former builds one group per
    parameter; groups with equal (lr, weight_decay) are merged here, which
    changes nothing in the update and keeps the optimizer state small.

    Args:
        model: the model; its parameters are classified by the module that owns them.
        base_lr: learning rate of every parameter outside ``backbone``.
        weight_decay: weight decay of every other parameter.
        weight_decay_norm: weight decay of the parameters of ``NORM_MODULE_TYPES`` modules.
        weight_decay_embed: weight decay of ``nn.Embedding`` weights and position tables.
        backbone_multiplier: lr factor of the parameters of the ``backbone`` module and its children.

    Returns:
        [{"params": [...], "lr": float, "weight_decay": float}], in the order
        the hyper-parameter pairs first appear.
    """
    groups: OrderedDict[tuple[float, float], list[nn.Parameter]] = OrderedDict()
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            in_backbone = module_name == "backbone" or module_name.startswith("backbone.")
            lr = base_lr * backbone_multiplier if in_backbone else base_lr
            if isinstance(module, NORM_MODULE_TYPES):
                wd = weight_decay_norm
            elif isinstance(module, nn.Embedding) or param_name in _EMBEDDING_PARAM_NAMES:
                wd = weight_decay_embed
            else:
                wd = weight_decay
            groups.setdefault((lr, wd), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def with_full_model_gradient_clipping(
    optimizer_type: type[torch.optim.Optimizer], clip_value: float, norm_type: float = 2.0
) -> type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first clips the norm of all gradients together.

    Under AMP, detectron2's ``AMPTrainer`` steps through ``GradScaler.step``,
    which unscales the gradients before calling this ``step``: the clipping
    sees true gradient magnitudes.
    """

    class FullModelGradientClippingOptimizer(optimizer_type):
        def step(self, closure=None):
            all_params = itertools.chain(*[group["params"] for group in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, clip_value, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClippingOptimizer.__name__ = f"FullModelGradientClipping{optimizer_type.__name__}"
    return FullModelGradientClippingOptimizer


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """Mask2Former's optimizer from SOLVER.* (OPTIMIZER "ADAMW" or "SGD", CLIP_GRADIENTS)."""
    solver = cfg.SOLVER
    param_groups = optimizer_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    if not param_groups:
        raise ValueError("The model has no trainable parameter: nothing to optimise")
    optimizer_types = {"ADAMW": torch.optim.AdamW, "SGD": torch.optim.SGD}
    if solver.OPTIMIZER not in optimizer_types:
        raise ValueError(
            f"SOLVER.OPTIMIZER must be one of {sorted(optimizer_types)}, not {solver.OPTIMIZER!r}"
        )
    optimizer_type = optimizer_types[solver.OPTIMIZER]
    clip = solver.CLIP_GRADIENTS
    full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model"
    if full_model and clip.CLIP_VALUE > 0.0:
        optimizer_type = with_full_model_gradient_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    kwargs = {"momentum": solver.MOMENTUM} if solver.OPTIMIZER == "SGD" else {}
    optimizer = optimizer_type(param_groups, lr=solver.BASE_LR, **kwargs)
    if not full_model:
        # detectron2's per-parameter "value" / "norm" clipping (a no-op when disabled).
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer


def adapt_cfg_to_device(cfg: CfgNode) -> CfgNode:
    """Without CUDA: MODEL.DEVICE "cpu" and SOLVER.AMP off (logged), so CUDA configs run on a CPU.

    detectron2's AMPTrainer asserts CUDA at the first step; the authors'
    configs ask for both. Returns ``cfg`` itself when nothing changes, else a
    copy with the same frozen state.
    """
    if torch.cuda.is_available():
        return cfg
    changes = {}
    if cfg.MODEL.DEVICE.startswith("cuda"):
        changes["MODEL.DEVICE"] = "cpu"
    if cfg.SOLVER.AMP.ENABLED:
        changes["SOLVER.AMP.ENABLED"] = False
    if not changes:
        return cfg
    logger.warning(
        "CUDA is not available: running with %s", ", ".join(f"{k}={v}" for k, v in changes.items())
    )
    was_frozen = cfg.is_frozen()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([item for kv in changes.items() for item in kv])
    if was_frozen:
        cfg.freeze()
    return cfg


def test_seen_flags(cfg: CfgNode, dataset_name: str) -> Optional[list[bool]]:
    """Seen flag of each class of ``dataset_name`` against the training vocabulary (None without one)."""
    train_names = train_vocabulary(cfg)
    if not train_names:
        return None
    return list(seen_flags(dataset_classes(dataset_name, "DATASETS.TEST"), train_names))


def rng_states() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) RNG states, as types ``torch.load(weights_only=True)`` reads."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    random.setstate(states["python"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class RAISummaryHook(HookBase):
    """Every ``period`` iterations, put the model's ``rai_summary()`` scalars into the EventStorage.

    The scalars appear as "rai/<key>" in metrics.json and TensorBoard (keys
    that already start with "rai/" are kept as they are). Models
    without ``rai_summary`` (or with an empty one) log nothing.
    """

    def __init__(self, model: nn.Module, period: int = 20):
        """
        Args:
            model: the trained model (DDP-wrapped or not).
            period: iterations between two records.
        """
        self._model = _unwrap(model)
        self._period = period

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period and next_iter != self.trainer.max_iter:
            return
        summary = getattr(self._model, "rai_summary", None)
        if summary is None:
            return
        scalars = {(k if k.startswith("rai/") else f"rai/{k}"): float(v) for k, v in summary().items()}
        if scalars:
            self.trainer.storage.put_scalars(smoothing_hint=False, **scalars)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with SCORE's optimizer, data, evaluation and vocabulary switching.

    Before the model is built, the constructor checks the solver values
    (:func:`score.engine.preflight.check_training_config`) and every training
    and test split (:meth:`check_datasets`): bad values, missing data and bad
    records stop the run before it spends time on the model.
    """

    # Training records already checked by the constructor, taken by build_train_loader.
    _checked_train_dicts: Optional[tuple[tuple[str, ...], list[dict]]] = None

    def __init__(self, cfg: CfgNode):
        cfg = adapt_cfg_to_device(cfg)
        check_training_config(cfg, comm.get_world_size())
        # The vocabulary sets the training classifier: checked against the splits' class lists.
        check_train_vocabulary(cfg)
        train_dicts = self.check_datasets(cfg, training=True)
        Trainer._checked_train_dicts = (tuple(cfg.DATASETS.TRAIN), train_dicts)
        try:
            super().__init__(cfg)
        finally:
            Trainer._checked_train_dicts = None

    @classmethod
    def check_datasets(cls, cfg: CfgNode, *, training: bool) -> list[dict]:
        """Load and validate the splits of a run: DATASETS.TRAIN (when ``training``) and DATASETS.TEST.

        The test splits of a training run are checked too, so that a bad one
        stops the run before training rather than at the first evaluation.
        Missing files or DETECTRON2_DATASETS raise ``FileNotFoundError``, bad
        records ``InvalidDatasetError`` (score/data/validation.py).

        Returns:
            The validated training records (all training splits; empty when not ``training``).
        """
        train_dicts = []
        if training:
            train_dicts = [r for name in cfg.DATASETS.TRAIN for r in cls.validated_dataset_dicts(cfg, name)]
        for name in cfg.DATASETS.TEST:
            cls.validated_dataset_dicts(cfg, name, test=True)
        return train_dicts

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Iterable:
        # Images without annotations (also those left empty by the validation)
        # are dropped when DATALOADER.FILTER_EMPTY_ANNOTATIONS is set (the recipe's default).
        checked = Trainer._checked_train_dicts
        if checked is not None and checked[0] == tuple(cfg.DATASETS.TRAIN):
            dicts = checked[1]
        else:
            dicts = [r for name in cfg.DATASETS.TRAIN for r in cls.validated_dataset_dicts(cfg, name)]
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            # Semantic records have a label image instead of "annotations": kept as they are.
            semantic = [r for r in dicts if "sem_seg_file_name" in r]
            instance = [r for r in dicts if "sem_seg_file_name" not in r]
            dicts = semantic + (filter_images_with_only_crowd_annotations(instance) if instance else [])
        if not dicts:
            raise ValueError(
                f"No training image left in {tuple(cfg.DATASETS.TRAIN)}: every image is without "
                "annotations (DATALOADER.FILTER_EMPTY_ANNOTATIONS drops those) or was dropped by "
                "DATASETS.DROP_INVALID"
            )
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            sampler = ResumableTrainingSampler(len(dicts))
        loader = build_detection_train_loader(
            cfg, mapper=build_train_mapper(cfg), dataset=dicts, sampler=sampler
        )
        # Found again by the trainer's load_state_dict to resume the stream.
        loader.resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Iterable:
        dicts = cls.validated_dataset_dicts(cfg, dataset_name, test=True)
        return build_detection_test_loader(
            dicts, mapper=build_test_mapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def validated_dataset_dicts(cls, cfg: CfgNode, dataset_name: str, *, test: bool = False) -> list[dict]:
        """The records of ``dataset_name`` after ``validate_dataset`` (DATASETS.DROP_INVALID).

        Of a ``test`` split, DROP_INVALID drops bad images but no annotation:
        the evaluator reads the annotation file as written, so a bad
        annotation there stops the run.
        """
        # Loading first: a load under another DETECTRON2_DATASETS replaces the metadata entry.
        dicts = DatasetCatalog.get(dataset_name)
        metadata = MetadataCatalog.get(dataset_name)
        semantic = metadata.get("evaluator_type", None) == "sem_seg"
        return validate_dataset(
            dicts,
            dataset_name,
            json_file=metadata.get("json_file", None),
            drop_invalid=cfg.DATASETS.DROP_INVALID,
            drop_annotations=not test,
            cache_dir=cfg.DATASETS.VALIDATION_CACHE_DIR,
            label_encoding=LabelEncoding.from_metadata(metadata) if semantic else None,
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """By the split's evaluator_type: ``InstanceSegEvaluator`` ("coco") or ``SemSegMIoUEvaluator``
        ("sem_seg"), writing to ``OUTPUT_DIR/inference/<dataset_name>``."""
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        output_dir = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if evaluator_type == "sem_seg":
            return SemSegMIoUEvaluator(
                dataset_name, output_dir=output_dir, seen_flags=test_seen_flags(cfg, dataset_name)
            )
        if evaluator_type != "coco":
            raise NotImplementedError(
                f"No evaluator for dataset {dataset_name!r} of evaluator_type {evaluator_type!r}"
            )
        return InstanceSegEvaluator(
            dataset_name,
            output_dir=output_dir,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            seen_flags=test_seen_flags(cfg, dataset_name),
            backend=cfg.TEST.COCO_EVAL_BACKEND,
        )

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: nn.Module,
        evaluators: Optional[Sequence[DatasetEvaluator] | DatasetEvaluator] = None,
    ) -> dict:
        """detectron2's ``test`` on each DATASETS.TEST entry, with the model's vocabulary set to its classes.

        The geometric-ensemble exponents are the model's, i.e. the cfg's
        (the evaluation scripts pass the per-target values on the command line).

        Returns:
            {dataset name: {task: metrics}}, or the inner dict for one dataset (as detectron2).
        """
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets")
        train_names = train_vocabulary(cfg) or None
        results = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            class_names = dataset_classes(dataset_name, "DATASETS.TEST")
            logger.info("Evaluating %s with its %d class names", dataset_name, len(class_names))
            _unwrap(model).set_vocabulary(class_names, train_names)
            single = cfg.clone()
            single.defrost()
            single.DATASETS.TEST = (dataset_name,)
            single.freeze()
            results[dataset_name] = super().test(
                single, model, None if evaluators is None else [evaluators[idx]]
            )
        if len(results) == 1:
            return next(iter(results.values()))
        return results

    def state_dict(self) -> dict[str, Any]:
        """detectron2's trainer state (iteration, LR scheduler), the optimizer, RNG states, sampler seed."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()  # the optimizer (and AMP's grad scaler)
        ret["rng"] = rng_states()
        ret["config"] = self.cfg.dump()  # names what differs when a resume's model does not fit
        sampler = getattr(self.data_loader, "resumable_sampler", None)
        if sampler is not None:
            ret["sampler"] = sampler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the data stream restarts after the images of iterations 0..iter."""
        super().load_state_dict(state_dict)
        if self.checkpointer.not_loaded:
            logger.warning(
                "Resumed from a partial load (MODEL.ALLOW_PARTIAL_WEIGHTS): the optimizer restarts from zero"
            )
        elif "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state: the optimizer restarts from zero")
        sampler = getattr(self.data_loader, "resumable_sampler", None)
        if sampler is not None and "sampler" in state_dict:
            sampler.load_state_dict(state_dict["sampler"])
            sampler.start = (self.iter + 1) * (self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size())
            if self.cfg.DATALOADER.ASPECT_RATIO_GROUPING:
                logger.warning(
                    "DATALOADER.ASPECT_RATIO_GROUPING is on: images drawn but still waiting in its "
                    "buckets at the checkpoint are skipped, the resumed batches differ"
                )
            # Before the RNG states: creating the iterator draws from torch's RNG, as the
            # uninterrupted run's did at its start.
            self._trainer._data_loader_iter = iter(self.data_loader)
        if "rng" in state_dict and comm.get_world_size() == 1:
            set_rng_states(state_dict["rng"])
        elif "rng" not in state_dict:
            logger.warning("The checkpoint has no RNG states: the resumed run's randomness differs")

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's ``resume_or_load``; a resume needs a checkpoint of the same model and iterations left.

        Resuming from OUTPUT_DIR's last checkpoint refuses one whose weights do
        not fit the config's model (``PartialCheckpointError`` naming the
        ``MODEL.*`` keys that changed, when the checkpoint saved its config,
        and every parameter of another shape), unless
        MODEL.ALLOW_PARTIAL_WEIGHTS: then the weights that fit are loaded and
        the optimizer restarts. A checkpoint past SOLVER.MAX_ITER is an error;
        one at MAX_ITER (a finished run) leaves nothing to train (see :meth:`train`).
        """
        resuming = resume and self.checkpointer.has_checkpoint()
        self.checkpointer.require_complete = resuming and not self.cfg.MODEL.ALLOW_PARTIAL_WEIGHTS
        try:
            super().resume_or_load(resume=resume)
        except PartialCheckpointError as error:
            saved = self.checkpointer.loaded_trainer_state.get("config")
            changed = config_differences(saved, self.cfg) if saved else []
            keys = ("\n  " + "\n  ".join(changed)) if changed else " (the checkpoint holds no config)"
            raise PartialCheckpointError(
                f"--resume: the last checkpoint of {self.cfg.OUTPUT_DIR} was trained with another model. "
                f"Config keys that differ:{keys}\n{error}\nResume with the checkpoint's config, or set "
                "MODEL.ALLOW_PARTIAL_WEIGHTS True to load what fits and restart the optimizer"
            ) from None
        finally:
            self.checkpointer.require_complete = False
        if resuming and self.start_iter > self.max_iter:
            raise ValueError(
                f"--resume: the last checkpoint of {self.cfg.OUTPUT_DIR} has trained {self.start_iter} "
                f"iterations, past SOLVER.MAX_ITER = {self.max_iter}: nothing to train. Raise "
                "SOLVER.MAX_ITER to train longer, or give another OUTPUT_DIR to train anew"
            )

    def train(self) -> Optional[dict]:
        """detectron2's ``train``; a resumed run that already reached SOLVER.MAX_ITER says so and returns."""
        if self.start_iter >= self.max_iter:
            logger.warning(
                "Nothing to train: the run in %s already reached SOLVER.MAX_ITER = %d. Raise SOLVER.MAX_ITER "
                "to train longer",
                self.cfg.OUTPUT_DIR,
                self.max_iter,
            )
            return None
        return super().train()

    def build_hooks(self) -> list[HookBase]:
        """detectron2's hooks plus ``RAISummaryHook``, placed before the writer so its scalars are written.

        DefaultTrainer's constructor makes a plain DetectionCheckpointer just
        before it builds the hooks; it is swapped here for one that also reads
        the authors' checkpoints, so that MODEL.WEIGHTS and --resume accept them.
        """
        self.checkpointer = SCORECheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        writer_index = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret))
        ret.insert(writer_index, RAISummaryHook(self.model, period=20))
        return ret
