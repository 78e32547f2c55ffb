#!/usr/bin/env python
"""Full-model CPU inference of two checkouts side by side: speed ratio and output agreement.

    python tools/bench/compare_checkouts.py --variant main=/path/to/other/checkout --variant new=. \\
        --variant new-auto=.:MODEL.SCORE.RSCLIP_DTYPE,auto --rounds 2 --output tools/bench/results/vs_main

Each variant (NAME=CHECKOUT[:KEY,VALUE,...]) runs in a fresh interpreter with
that checkout's ``score`` first on the path, one thread, one after the other
(never two full-size models at once), the variants alternating for
``--rounds`` rounds so that a change in the machine's load hits all of them.
Each run builds the full SCORE model (``--config``, by default
configs/score_isaid_instance.yaml) with RANDOM weights from seed 0
(``RANDOM_INIT_CLIP``: no weights can be downloaded here; the same seed gives
the same weights in every checkout that builds the same modules, checked by a
parameter checksum), the text classifier replaced by seeded random rows.
With ``--trained`` it loads instead the weights the config and ``--opts``
name (``MODEL.WEIGHTS``, the CLIP towers' files), as ``tools/predict.py``
does, and encodes the vocabulary (``--vocab``, by default NWPU VHR-10's
classes) with the text tower: to check a speed option on your own model and
images:

    python tools/bench/compare_checkouts.py --trained --variant ref=. \
        --variant fast=.:MODEL.SCORE.DECODER_FUSED_ATTENTION,True \
        --image-dir my_images --images a.png b.png --vocab "ship,harbor" \
        --output /tmp/fast_vs_ref --opts MODEL.WEIGHTS model_final.pth

Then each run makes:

* a warm-up forward on the first ``--images`` image (its outputs kept);
* ``--repeats`` timed forwards (default 1) of a random 512 x 683 image (the
  size of a 600 x 800 picture after the test resize): the fastest is the
  run's speed figure;
* a timed forward on each further image (outputs kept).

With ``--warm-up-all`` every one of these inputs is first run once untimed,
so that the first image's forward is timed too and a variant that compiles
(``MODEL.SCORE.COMPILE_AT_INFERENCE``) has met every input size before the
timed forwards. A KEY,VALUE list may hold a list value (``[a,b]``).

Images are read RGB and resized as the test mapper does (short side 512,
long side <= 800); outputs are at the original size. Agreement against the
first variant (or against each variant named by ``--agreement-with``, for the
variants listed after it), per image: predicted classes equal (in score
order), and the IoU of each detection's mask with the same-rank detection of
the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tabulate import tabulate

DEFAULT_IMAGES = "/work/shared/data/nwpu_vhr10_sample/images"

WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
checkout, config, images, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
out, warm_up_all, trained = sys.argv[5], sys.argv[6] == "1", sys.argv[7] == "1"
vocabulary, repeats = json.loads(sys.argv[8]), int(sys.argv[9])
import score  # noqa
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from score.config import get_score_cfg
from score.data import datasets

cfg = get_score_cfg()
cfg.merge_from_file(str(Path(checkout) / config))
cfg.merge_from_list(opts)
if not trained:
    cfg.MODEL.SCORE.RANDOM_INIT_CLIP = True
cfg.MODEL.DEVICE = "cpu"
cfg.freeze()
torch.manual_seed(0)
if trained:
    from score.predict.predictor import SCOREPredictor
    model = SCOREPredictor(cfg).model
else:
    model = build_model(cfg).eval()
    embed_dim = model.backbone.embed_dim
    def rows(prompts, generator=torch.Generator().manual_seed(0)):
        return torch.randn(len(prompts), embed_dim, generator=generator)
    model.text_classifiers.encode_fn = rows
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
model.set_vocabulary(vocabulary or list(datasets.NWPU_CLASSES))
resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

def load(path):
    image = read_image(path, format="RGB")
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}

def run(inputs):
    tic = time.perf_counter()
    with torch.inference_mode():
        instances = model([inputs])[0]["instances"]
    return time.perf_counter() - tic, instances

result = {"checksum": checksum, "images": {}}
saved = {}
generator = torch.Generator().manual_seed(1)
random_image = torch.randint(0, 256, (3, 512, 683), dtype=torch.uint8, generator=generator)
if warm_up_all:
    for inputs in [load(path) for path in images] + [{"image": random_image, "height": 512, "width": 683}]:
        run(inputs)
for index, path in enumerate(images):
    seconds, instances = run(load(path))
    name = Path(path).stem
    order = instances.scores.argsort(descending=True)
    saved[name + "_classes"] = instances.pred_classes[order].numpy()
    saved[name + "_scores"] = instances.scores[order].numpy()
    saved[name + "_masks"] = np.packbits(instances.pred_masks[order].numpy(), axis=-1)
    result["images"][name] = {"seconds": seconds, "warm_up": index == 0 and not warm_up_all}
    if index == 0:
        timed = [run({"image": random_image, "height": 512, "width": 683})[0] for _ in range(repeats)]
        result["seconds_512x683"], result["seconds_512x683_all"] = min(timed), timed
np.savez_compressed(out + ".npz", **saved)
Path(out + ".json").write_text(json.dumps(result))
"""


def _split_opts(text: str) -> list:
    """KEY,VALUE,... split at the commas outside brackets (a list value keeps its own)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[(") - (char in "])")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in parts + [current] if p]


def _parse_variant(text: str):
    name, rest = text.split("=", 1)
    checkout, _, opts = rest.partition(":")
    return name, str(Path(checkout).resolve()), _split_opts(opts)


def _agreement(ref: np.lib.npyio.NpzFile, new: np.lib.npyio.NpzFile, name: str) -> dict:
    ref_classes, new_classes = ref[name + "_classes"], new[name + "_classes"]
    ref_masks = np.unpackbits(ref[name + "_masks"], axis=-1).astype(bool)
    new_masks = np.unpackbits(new[name + "_masks"], axis=-1).astype(bool)
    inter = (ref_masks & new_masks).reshape(len(ref_masks), -1).sum(1)
    union = (ref_masks | new_masks).reshape(len(ref_masks), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {
        "detections": len(ref_classes),
        "classes_equal": bool(np.array_equal(ref_classes, new_classes)),
        "min_mask_iou": float(iou.min()) if len(iou) else 1.0,
        "mean_mask_iou": float(iou.mean()) if len(iou) else 1.0,
        "max_score_diff": float(np.abs(ref[name + "_scores"] - new[name + "_scores"]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", required=True, help="NAME=CHECKOUT[:KEY,VALUE,...]")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed forwards of the 512 x 683 image in each run; the fastest is the run's figure",
    )
    parser.add_argument(
        "--config", default="configs/score_isaid_instance.yaml", help="relative to each checkout"
    )
    parser.add_argument("--images", nargs="+", default=["085.jpg", "136.jpg"])
    parser.add_argument("--image-dir", default=DEFAULT_IMAGES)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--agreement-with",
        nargs="+",
        default=None,
        help="variants whose outputs the others are compared with (default: the first variant)",
    )
    parser.add_argument(
        "--warm-up-all",
        action="store_true",
        help="run every input once, untimed, before the timed forwards (each image then counts; "
        "a compiled variant has then met every input size)",
    )
    parser.add_argument(
        "--trained",
        action="store_true",
        help="load the weights the config and --opts name and encode --vocab with the text tower "
        "(default: random weights from seed 0 and random text rows)",
    )
    parser.add_argument(
        "--vocab", default="", help="class names, comma-separated (default: NWPU VHR-10's ten classes)"
    )
    parser.add_argument("--output", required=True, help="OUTPUT.json, OUTPUT.md")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE ... config overrides for every variant (before its own; relative paths are "
        "read from each checkout); must come last",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.rounds < 1:
        parser.error(f"--repeats and --rounds must be at least 1, got {args.repeats} and {args.rounds}")
    variants = [
        (name, checkout, args.opts + opts) for name, checkout, opts in map(_parse_variant, args.variant)
    ]
    vocabulary = [name.strip() for name in args.vocab.split(",") if name.strip()]
    images = [str(Path(args.image_dir).resolve() / name) for name in args.images]
    work = Path(tempfile.mkdtemp(prefix="compare_checkouts_"))
    runs = []
    for round_index in range(args.rounds):
        for name, checkout, opts in variants:
            out = work / f"{name}_{round_index}"
            env = dict(os.environ, PYTHONPATH=checkout, OMP_NUM_THREADS="1")
            command = [
                args.python,
                "-W",
                "ignore",
                "-c",
                WORKER,
                checkout,
                args.config,
                json.dumps(images),
                json.dumps(opts),
            ]
            load = os.getloadavg()[0]
            subprocess.run(
                command
                + [
                    str(out),
                    "1" if args.warm_up_all else "0",
                    "1" if args.trained else "0",
                    json.dumps(vocabulary),
                    str(args.repeats),
                ],
                check=True,
                cwd=checkout,
                env=env,
            )
            result = json.loads(Path(f"{out}.json").read_text())
            runs.append({"variant": name, "round": round_index, "load1": load, **result, "out": str(out)})
            print(
                f"{name} round {round_index}: {result['seconds_512x683']:.1f} s (load {load:.1f})", flush=True
            )
            Path(f"{args.output}.json").write_text(
                json.dumps({"variants": args.variant, "runs": runs}, indent=1)
            )

    reference = variants[0][0]
    speed = []
    for name, _, opts in variants:
        mine = [r for r in runs if r["variant"] == name]
        ratios = [
            ref["seconds_512x683"] / r["seconds_512x683"]
            for r in mine
            for ref in runs
            if ref["variant"] == reference and ref["round"] == r["round"]
        ]
        speed.append(
            {
                "variant": name,
                "opts": " ".join(opts),
                "s per image (each round)": " / ".join(f"{r['seconds_512x683']:.1f}" for r in mine),
                f"speed-up vs {reference} (each round)": " / ".join(f"{x:.2f}" for x in ratios),
                "checksum equal": all(r["checksum"] == runs[0]["checksum"] for r in mine),
            }
        )
    agreement = []
    names = [name for name, _, _ in variants]
    # Round 0 of each variant: the outputs do not depend on the round.
    outputs = {name: np.load(f"{next(r for r in runs if r['variant'] == name)['out']}.npz") for name in names}
    for ref_name in args.agreement_with or [reference]:
        for name in names[names.index(ref_name) + 1 :]:
            for image in args.images:
                row = _agreement(outputs[ref_name], outputs[name], Path(image).stem)
                agreement.append({"variant": name, "against": ref_name, "image": image, **row})
    report = {"variants": args.variant, "runs": runs, "speed": speed, "agreement": agreement}
    Path(f"{args.output}.json").write_text(json.dumps(report, indent=1))
    weights = "trained weights" if args.trained else "random weights (seed 0)"
    text = "\n".join(
        [
            f"Command: `{' '.join(sys.argv)}`",
            "",
            f"`{args.config}`, {weights}, CPU, 1 thread, the fastest of {args.repeats} timed forward(s)"
            " of a 512 x 683 image in each run:",
            "",
            tabulate(speed, headers="keys", tablefmt="github"),
            "",
            "Agreement on the images (detections in score order), of each variant"
            " listed after the one in `against`:",
            "",
            tabulate(agreement, headers="keys", tablefmt="github"),
        ]
    )
    Path(f"{args.output}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
