"""Fixtures of the prediction tests: the tool loaded as a module, and its log messages."""

import logging

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def predict_tool():
    """tools/predict.py loaded as a module."""
    return load_script("tools/predict.py")


@pytest.fixture
def messages():
    """Records of the tool's logger (detectron2's setup_logger stops propagation, so caplog may miss them)."""

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    handler = Collect()
    tool_logger = logging.getLogger("score.predict")
    tool_logger.addHandler(handler)
    old_level = tool_logger.level
    tool_logger.setLevel(logging.INFO)
    yield handler.records
    tool_logger.removeHandler(handler)
    tool_logger.setLevel(old_level)
