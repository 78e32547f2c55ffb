#!/usr/bin/env python
"""Convert a checkpoint of the authors' SCORE implementation to this project's key names.

    python tools/convert_official_checkpoint.py official.pth converted.pth

Not needed to load one (``MODEL.WEIGHTS official.pth`` converts on the fly);
useful to inspect or re-distribute a converted file. Only the model state
dict is kept.
"""

import argparse
import logging

import torch

from score.checkpoint import convert_official_state_dict, is_official_state_dict

logger = logging.getLogger("score.convert")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="checkpoint written by the authors' implementation (.pth)")
    parser.add_argument("target", help="where to write the converted checkpoint")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        checkpoint = torch.load(args.source, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as e:
        raise SystemExit(f"cannot read checkpoint {args.source}: {e}") from e
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise SystemExit(
            f"{args.source} holds no state dict (expected a dict, or a dict with a 'model' entry)"
        )
    if not is_official_state_dict(state_dict):
        logger.warning(
            "%s does not look like an authors' checkpoint; writing it with keys unchanged", args.source
        )
    torch.save({"model": convert_official_state_dict(state_dict)}, args.target)
    logger.info("wrote %s (%d entries)", args.target, len(state_dict))


if __name__ == "__main__":
    main()
