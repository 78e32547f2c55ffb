"""tools/predict.py under torchrun with 2 CPU processes (gloo) writes what one process writes."""

import score  # noqa: F401, I001  (first: its shims let detectron2 import without detectron2._C)
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, TINY_CONFIG, tiny_cfg
from tests.inference.test_predict_tool import FAST_OPTS, load_tool

OUTPUTS = [
    "predictions.json",
    "geojson/scene.geojson",
    "geojson/scene.geojsonl",
    "visualizations/scene.jpg",
    "visualizations/a.jpg",
    "scenes/scene/detections.jsonl",
]


def write_inputs(folder, write_scene):
    """folder/inputs with a GeoTIFF scene (``write_scene(path)``) and a small PNG; returns the folder."""
    inputs = folder / "inputs"
    inputs.mkdir()
    write_scene(str(inputs / "scene.tif"))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
        inputs / "a.png"
    )
    return inputs


def predict_with_two_processes(folder, argv, shard):
    """tools/predict.py ``argv`` under torchrun, 2 gloo processes sharding ``shard``; returns its output."""
    out = folder / shard
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    command += ["--nproc_per_node", "2", str(REPO / "tools" / "predict.py"), "--output", str(out)]
    command += ["--shard", shard]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(command + argv, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Rank 0 of 2; sharding the {shard}" in run.stdout + run.stderr
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from detectron2.modeling import build_model

    folder = tmp_path_factory.mktemp("distributed")
    inputs = write_inputs(folder, lambda path: load_tool("make_geotiff_scene").make_scene(path, 400, seed=3))
    weights = folder / "tiny.pth"  # the same model in every process
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, weights)
    argv = ["--config-file", str(TINY_CONFIG), "--input", str(inputs), "--vocab", "building,ship"]
    argv += [
        "--confidence-threshold",
        "0",
        "--tiling",
        "always",
        "--tile-size",
        "128",
        "--tile-overlap",
        "32",
    ]
    argv += ["--vis-max-size", "200", *FAST_OPTS, "MODEL.WEIGHTS", str(weights)]  # 4 x 4 tiles + 1 tile
    single = folder / "single"
    assert load_tool("predict").main(["--output", str(single), *argv]) == 0
    return folder, argv, single


@pytest.mark.slow  # two processes each load the model (about 40 s on 2 shared cores)
@pytest.mark.parametrize("shard", ["rows", "scenes"])
def test_two_gloo_processes_equal_one(setup, shard):
    folder, argv, single = setup
    out = predict_with_two_processes(folder, argv, shard)
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert not list((out / "scenes" / "scene").glob("tiles.*"))  # the rank parts are joined and removed


SEMANTIC_CONFIG = REPO / "configs" / "tiny" / "score_tiny_landdiscover_semantic.yaml"
CLASS_MAPS = [
    "classmaps/scene.tif",
    "classmaps/scene.png",
    "classmaps/scene.classes.json",
    "classmaps/a.png",
    "geojson/scene.geojson",
]


@pytest.fixture(scope="module")
def semantic_setup(tmp_path_factory):
    from detectron2.modeling import build_model

    from score.config import get_score_cfg

    folder = tmp_path_factory.mktemp("distributed_semantic")
    make_scene = load_tool("make_geotiff_scene").make_landcover_scene
    inputs = write_inputs(folder, lambda path: make_scene(path, 400, block=200))
    cfg = get_score_cfg()
    cfg.merge_from_file(str(SEMANTIC_CONFIG))
    weights = folder / "tiny_semantic.pth"  # the same model in every process
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    argv = ["--config-file", str(SEMANTIC_CONFIG), "--input", str(inputs), "--vocab", "water,tree,building"]
    argv += ["--tiling", "always", "--tile-size", "128", "--tile-overlap", "32", "--vectorize", "--no-vis"]
    argv += [*FAST_OPTS, "MODEL.WEIGHTS", str(weights)]  # 4 x 4 tiles + 1 tile
    single = folder / "single"
    assert load_tool("predict").main(["--output", str(single), *argv]) == 0
    return folder, argv, single


@pytest.mark.slow  # two processes each load the model (about 40 s on 2 shared cores)
@pytest.mark.parametrize("shard", ["rows", "scenes"])
def test_two_gloo_processes_write_the_class_maps_of_one(semantic_setup, shard):
    folder, argv, single = semantic_setup
    out = predict_with_two_processes(folder, argv, shard)
    for name in CLASS_MAPS:
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert not list((out / "scenes" / "scene").glob("tiles.*"))  # the rank parts are joined and removed
