"""tools/predict.py's command line: usage errors before the model is built."""

import logging

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_CONFIG, load_script


@pytest.fixture(scope="module")
def predict_tool():
    return load_script("tools/predict.py")


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path


class ModelBuilt(Exception):
    pass


@pytest.fixture
def no_model(predict_tool, monkeypatch):
    """The model is never built: reaching it raises ModelBuilt."""

    def refuse(cfg):
        raise ModelBuilt

    monkeypatch.setattr(predict_tool, "SCOREPredictor", refuse)


@pytest.fixture
def errors():
    records = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: records.append(record.getMessage())
    tool_logger = logging.getLogger("score.predict")
    tool_logger.addHandler(handler)
    yield records
    tool_logger.removeHandler(handler)


def _argv(picture, tmp_path, *extra):
    return [
        "--config-file",
        str(TINY_CONFIG),
        "--input",
        str(picture),
        "--output",
        str(tmp_path / "out"),
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--opts", "MODEL.WEIGHTS", "w.pth", "--vocab", "ship"], "Move --vocab before --opts"),
        (["--opts", "INPUT.MIN_SIZE_TEST", "64", "--no-vis"], "Move --no-vis before --opts"),
        (["--opts", "INPUT.MIN_SIZE_TEST"], "KEY VALUE pairs"),
    ],
)
def test_misplaced_opts_is_a_usage_error(predict_tool, picture, tmp_path, capsys, no_model, extra, named):
    with pytest.raises(SystemExit) as info:
        predict_tool.main(_argv(picture, tmp_path, *extra))
    assert info.value.code == 2
    assert named in capsys.readouterr().err


def test_no_weights_is_an_error_unless_allowed(predict_tool, picture, tmp_path, errors, no_model):
    real = ["--opts", "MODEL.SCORE.RANDOM_INIT_CLIP", "False"]  # the tiny config without its random switch
    assert predict_tool.main(_argv(picture, tmp_path, "--vocab", "ship", *real)) == 2
    assert any("no MODEL.WEIGHTS" in m and "--allow-untrained" in m for m in errors), errors
    with pytest.raises(ModelBuilt):  # allowed: the tool goes on to build the model
        predict_tool.main(_argv(picture, tmp_path, "--vocab", "ship", "--allow-untrained", *real))
    with pytest.raises(ModelBuilt):  # the tiny config asks for random weights itself
        predict_tool.main(_argv(picture, tmp_path, "--vocab", "ship"))
