"""Build a frozen open_clip model and find its weights: tags, local files, Hugging Face hub files.

Both CLIPs of SCORE are open_clip models whose weights come from one of three
places (config keys ``MODEL.SCORE.CLIP_PRETRAINED_WEIGHTS`` and
``MODEL.SCORE.RSCLIP_PRETRAINED_WEIGHTS``):

a. an open_clip pretrained tag of the model (``laion2b_s29b_b131k_ft_soup``),
   fetched by open_clip through the Hugging Face hub and its cache;
b. a local state-dict file, absolute or relative; a relative path is looked up
   under the repository root (so a run started from any folder finds
   ``RemoteCLIP/RemoteCLIP-ViT-L-14.pt``) and then under the working
   directory;
c. ``hf-hub:ORG/REPO/FILE`` or ``hf-hub:ORG/REPO`` (the file is then the
   caller's default, e.g. ``RemoteCLIP-ViT-L-14.pt`` of ``chendelong/RemoteCLIP``),
   fetched with ``huggingface_hub.hf_hub_download`` and loaded like (b).

Missing weights are an error that names every place tried and how to get the
file; only ``random_init=True`` builds a tower without weights, and it says so
in a warning. A run never falls back to random weights on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import open_clip
import torch
from torch import nn

from . import tiny_clip  # noqa: F401  (the tiny configs are open_clip names once it is imported)

__all__ = [
    "HF_HUB_PREFIX",
    "PROJECT_ROOT",
    "WeightsLoadError",
    "WeightsNotFoundError",
    "candidate_paths",
    "create_clip_model",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
# The repository root: the folder that holds the ``score`` package.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# RemoteCLIP's weights are published as RemoteCLIP-<open_clip name>.pt in this hub repository.
_REMOTECLIP_HUB_REPO = "chendelong/RemoteCLIP"
_REMOTECLIP_FILE = re.compile(r"^RemoteCLIP-.+\.pt$")
# At most this many key names are quoted in an error or warning.
_MAX_KEYS_SHOWN = 10


class WeightsNotFoundError(FileNotFoundError):
    """CLIP weights could not be found or fetched; the message lists every place tried."""


class WeightsLoadError(RuntimeError):
    """A weights file was found but cannot be read or does not fit the model; the message names it."""


def candidate_paths(weights: str) -> List[Path]:
    """Where a local weights reference is looked up, in order.

    An absolute path (``~`` expanded) is the only candidate; a relative path is
    tried under the repository root, then under the working directory when
    that is another folder.
    """
    path = Path(weights).expanduser()
    if path.is_absolute():
        return [path]
    candidates = [PROJECT_ROOT / path]
    cwd_candidate = Path.cwd() / path
    if cwd_candidate.resolve() != candidates[0].resolve():
        candidates.append(cwd_candidate)
    return candidates


def weights_fingerprint(weights: str, random_init: bool) -> str:
    """Identity of a weights reference for the text-classifier cache key.

    "" for random weights (such a classifier must not be cached on disk); the
    resolved path, size and modification time for a local file that exists;
    the reference itself (tag or ``hf-hub:`` name) otherwise.
    """
    if random_init:
        return ""
    if not weights.startswith(HF_HUB_PREFIX):
        for path in candidate_paths(weights):
            if path.is_file():
                stat = path.stat()
                return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return weights


def create_clip_model(
    model_name: str,
    weights: str,
    *,
    random_init: bool = False,
    force_quick_gelu: bool = False,
    hub_default_filename: Optional[str] = None,
    precision: str = "fp32",
    config_key: Optional[str] = None,
) -> nn.Module:
    """Build the full open_clip CLIP ``model_name`` (image and text towers), frozen, in eval mode.

    Args:
        model_name: open_clip model name (``convnext_large_d_320``, ``ViT-L-14``,
            or a ``score-tiny-*`` config of :mod:`score.modeling.tiny_clip`).
        weights: an open_clip pretrained tag of that model, a local file
            (absolute, or relative to the repository root or the working
            directory), or ``hf-hub:ORG/REPO[/FILE]``.
        random_init: build with random weights and load nothing (tests and
            benchmarks only); logged as a warning.
        force_quick_gelu: QuickGELU in the MLPs (open_clip's ``force_quick_gelu``).
        hub_default_filename: file fetched for ``hf-hub:ORG/REPO`` without a file.
        precision: open_clip precision: "fp32", or "fp16" / "bf16", which keep
            LayerNorms and embeddings in float32 and convert convolutions,
            linear and attention weights and the projections
            (open_clip's ``convert_weights_to_lp``).
        config_key: the config key holding ``weights``, quoted in error messages.

    Returns:
        The open_clip model with ``requires_grad`` False on every parameter.

    Raises:
        WeightsNotFoundError: the weights are neither a tag that can be fetched,
            nor a local file, nor a hub file that can be fetched.
        WeightsLoadError: the file cannot be read or its image-tower keys are
            missing or have other shapes than the model's.
    """
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"Unknown open_clip model name {model_name!r}; see open_clip.list_models().")
    create_kwargs = dict(force_quick_gelu=force_quick_gelu, precision=precision)

    if random_init:
        logger.warning(
            "Building open_clip %s with RANDOM weights (random_init=True): its features are "
            "meaningless; use this only for tests and benchmarks.",
            model_name,
        )
        with _quiet_open_clip_no_weights_notice():
            model = open_clip.create_model(model_name, **create_kwargs)
    elif not weights:
        setting = config_key or "the weights reference"
        raise WeightsNotFoundError(
            f"No weights given for open_clip model {model_name!r}: set {setting} to an open_clip tag "
            f"({open_clip.list_pretrained_tags_by_model(model_name) or 'none for this model'}), a local file "
            "or 'hf-hub:ORG/REPO/FILE' (random weights only with MODEL.SCORE.RANDOM_INIT_CLIP)."
        )
    elif weights in open_clip.list_pretrained_tags_by_model(model_name):
        checkpoint = _fetch_tag(model_name, weights, config_key)
        model = open_clip.create_model(model_name, pretrained=checkpoint, **create_kwargs)
        logger.info("Loaded open_clip %s weights %r from %s", model_name, weights, checkpoint)
    else:
        if weights.startswith(HF_HUB_PREFIX):
            path = _fetch_hub_file(weights, hub_default_filename, config_key)
        else:
            path = _find_local_file(model_name, weights, config_key)
        with _quiet_open_clip_no_weights_notice():
            model = open_clip.create_model(model_name, **create_kwargs)
        _load_state_dict_file(model, path)
        logger.info("Loaded open_clip %s weights from %s", model_name, path)

    model.eval()
    model.requires_grad_(False)
    return model


@contextlib.contextmanager
def _quiet_open_clip_no_weights_notice() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" notice while we build a model we load ourselves.

    open_clip logs it on the root logger whenever it loads no checkpoint
    itself; here the weights are loaded right after (or the random
    initialisation has its own warning), so the notice would be false.
    """

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _how_to_get(weights: str, config_key: Optional[str]) -> str:
    """A hint on how to obtain a missing weights file."""
    setting = f"set {config_key}" if config_key else "pass another weights reference"
    name = Path(weights).name
    if _REMOTECLIP_FILE.match(name):
        path = Path(weights).expanduser()
        folder = path.parent if path.is_absolute() else PROJECT_ROOT / path.parent
        return (
            f"download {name} from the Hugging Face repository {_REMOTECLIP_HUB_REPO} into {folder}/, "
            f"or {setting} (e.g. to 'hf-hub:{_REMOTECLIP_HUB_REPO}/{name}' or another local file)"
        )
    return (
        f"put the file at one of the paths above, give an absolute path, an open_clip tag of the model, "
        f"or 'hf-hub:ORG/REPO/FILE', or {setting}"
    )


def _find_local_file(model_name: str, weights: str, config_key: Optional[str]) -> Path:
    candidates = candidate_paths(weights)
    for path in candidates:
        if path.is_file():
            return path
    tried = "\n".join(f"  - local file {path}" for path in candidates)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise WeightsNotFoundError(
        f"CLIP weights {weights!r} for open_clip model {model_name!r} not found. Tried:\n{tried}\n"
        f"  - open_clip pretrained tags of {model_name}: {tags or 'none'} (not one of them)\n"
        f"To get them: {_how_to_get(weights, config_key)}."
    )


def _offline_note() -> str:
    from huggingface_hub import constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set, so only the local hub cache was searched"
    return "set HF_HUB_OFFLINE=1 to use the local hub cache only"


def _fetch_hub_file(weights: str, default_filename: Optional[str], config_key: Optional[str]) -> Path:
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import hf_hub_download

    parts = weights[len(HF_HUB_PREFIX) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(
            f"Malformed hub reference {weights!r}: expected 'hf-hub:ORG/REPO' or 'hf-hub:ORG/REPO/FILE'."
        )
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or default_filename
    if not filename:
        raise ValueError(f"Hub reference {weights!r} names no file and this model has no default file name.")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as error:  # any failure of the hub client (offline, missing repo or file, HTTP)
        hint = (
            f"run once with network access (the file is then cached), or download {filename} from the "
            f"Hugging Face repository {repo_id} and point {config_key or 'the weights'} to its local path"
        )
        raise WeightsNotFoundError(
            f"CLIP weights {weights!r} could not be fetched. Tried:\n"
            f"  - Hugging Face hub repository {repo_id}, file {filename} "
            f"(cache {hub_constants.HF_HUB_CACHE}): {type(error).__name__}: {error}\n"
            f"Note: {_offline_note()}.\nTo get them: {hint}."
        ) from error


def _fetch_tag(model_name: str, tag: str, config_key: Optional[str]) -> str:
    """Download (or find in the cache) the checkpoint of an open_clip tag; its local path."""
    from huggingface_hub import constants as hub_constants
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(model_name, tag)
    if pretrained_cfg.get("hf_hub"):
        source = f"Hugging Face hub {pretrained_cfg['hf_hub']} (cache {hub_constants.HF_HUB_CACHE})"
    else:
        source = f"{pretrained_cfg.get('url')} (cache {Path('~/.cache/clip').expanduser()})"
    try:
        checkpoint = download_pretrained(pretrained_cfg)
    except Exception as error:  # any failure of open_clip's downloaders (offline, HTTP, hub client)
        checkpoint, failure = "", f"{type(error).__name__}: {error}"
    else:
        failure = "no file returned"
    if not checkpoint or not os.path.isfile(checkpoint):
        setting = f", or set {config_key}" if config_key else ""
        raise WeightsNotFoundError(
            f"open_clip pretrained tag {tag!r} of {model_name!r} could not be fetched. Tried:\n"
            f"  - {source}: {failure}\n"
            f"Note: {_offline_note()}; a run without network needs the file in that cache.\n"
            f"To get them: fetch the tag once with network access, or give a local file path "
            f"(a state dict of {model_name}) instead of the tag{setting}."
        )
    return checkpoint


def _read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from {"state_dict": ...} and "module." prefixes."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a truncated or foreign file
        raise WeightsLoadError(
            f"Cannot read CLIP weights file {path}: {type(error).__name__}: {error}. "
            "The file may be truncated or not a PyTorch state dict; download it again."
        ) from error
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    ok = isinstance(checkpoint, Mapping) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    if not ok:
        raise WeightsLoadError(f"CLIP weights file {path} does not hold a state dict of tensors.")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in checkpoint.items()}


def _load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``; image-tower keys must all be present with the model's shapes."""
    state_dict = _read_state_dict(path)
    expected = model.state_dict()
    # Older checkpoints store the scalar logit_scale with another number of dimensions.
    if "logit_scale" in state_dict and "logit_scale" in expected:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(expected["logit_scale"].shape)

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched: List[Tuple[str, tuple, tuple]] = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    missing_visual = [k for k in missing if k.startswith("visual.")]
    if missing_visual or mismatched:
        lines = []
        if missing_visual:
            lines.append(f"missing image-tower keys ({len(missing_visual)}): {_first(missing_visual)}")
        if mismatched:
            shown = ", ".join(f"{k} file {a} vs model {b}" for k, a, b in mismatched[:_MAX_KEYS_SHOWN])
            lines.append(f"shape mismatches ({len(mismatched)}): {shown}")
        raise WeightsLoadError(
            f"CLIP weights file {path} does not fit the model: " + "; ".join(lines) + ". Is it a checkpoint "
            "of this open_clip model name?"
        )
    if missing:
        logger.warning(
            "CLIP weights file %s lacks %d keys outside the image tower; they keep random values: %s",
            path,
            len(missing),
            _first(missing),
        )
    if unexpected:
        logger.warning(
            "CLIP weights file %s has %d unused keys: %s", path, len(unexpected), _first(unexpected)
        )
    model.load_state_dict(state_dict, strict=False)


def _first(keys: List[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    return shown + (", ..." if len(keys) > _MAX_KEYS_SHOWN else "")
