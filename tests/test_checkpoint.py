"""SCORECheckpointer: unreadable files, --resume fallback, atomic writes and partial loads."""

import logging
import os

import pytest
import torch
from torch import nn

import score  # noqa: F401  (detectron2 compatibility shims first)

# isort: split
from score.checkpoint import PartialCheckpointError, SCORECheckpointer, UnreadableCheckpointError


class Toy(nn.Module):
    """A frozen tower (as the CLIP towers) and a trained head."""

    def __init__(self, width=4):
        super().__init__()
        self.tower = nn.Linear(3, 3)
        self.tower.requires_grad_(False)
        self.head = nn.Linear(3, width)
        self.register_buffer("counter", torch.zeros((), dtype=torch.long))


class Counter:
    """A checkpointable like detectron2's trainer: its state is an iteration number."""

    def __init__(self):
        self.iteration = -1

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, state):
        self.iteration = state["iteration"]


def _run(tmp_path, iterations):
    """Checkpoints model_<i>.pth written at each iteration, as by the periodic checkpointer."""
    model, counter = Toy(), Counter()
    checkpointer = SCORECheckpointer(model, str(tmp_path), trainer=counter)
    for i in iterations:
        counter.iteration = i
        with torch.no_grad():
            model.head.bias.fill_(i)
        checkpointer.save(f"model_{i:07d}")
        os.utime(tmp_path / f"model_{i:07d}.pth", (1000 + i, 1000 + i))  # mtimes in order
    return model


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_checkpoint_error_names_the_file(tmp_path):
    _run(tmp_path, [1])
    path = tmp_path / "model_0000001.pth"
    _truncate(path)
    with pytest.raises(UnreadableCheckpointError, match="model_0000001.pth"):
        SCORECheckpointer(Toy()).load(str(path))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="garbage.pth"):
        SCORECheckpointer(Toy()).load(str(garbage))


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog):
    _run(tmp_path, [1, 2, 3])
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    _truncate(tmp_path / "model_0000003.pth")
    model, counter = Toy(), Counter()
    with caplog.at_level(logging.WARNING, logger="fvcore.common.checkpoint"):
        SCORECheckpointer(model, str(tmp_path), trainer=counter).resume_or_load("", resume=True)
    assert counter.iteration == 2  # the newest readable one, not the oldest
    assert torch.equal(model.head.bias, torch.full((4,), 2.0))
    assert "model_0000003.pth" in caplog.text and "instead of" in caplog.text

    for name in ("model_0000001.pth", "model_0000002.pth"):
        _truncate(tmp_path / name)
    with pytest.raises(UnreadableCheckpointError, match="no readable checkpoint"):
        SCORECheckpointer(Toy(), str(tmp_path), trainer=Counter()).resume_or_load("", resume=True)


def test_save_is_atomic(tmp_path, monkeypatch):
    _run(tmp_path, [1])
    before = (tmp_path / "model_0000001.pth").read_bytes()
    checkpointer = SCORECheckpointer(Toy(), str(tmp_path))

    def dies_halfway(data, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the run is killed while writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000001")
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000002")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no temporary left
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def _save_state(path, state):
    torch.save({"model": state}, path)
    return str(path)


def test_partial_checkpoints_are_refused_when_complete_ones_are_required(tmp_path, caplog):
    full = Toy().state_dict()
    # Without the frozen tower (loaded from its own file) and the buffer: complete.
    trained_only = _save_state(
        tmp_path / "trained.pth", {k: v for k, v in full.items() if k.startswith("head")}
    )
    model = Toy()
    SCORECheckpointer(model, require_complete=True).load(trained_only)
    assert torch.equal(model.head.weight, full["head.weight"])

    without_bias = _save_state(tmp_path / "partial.pth", {k: v for k, v in full.items() if k != "head.bias"})
    with pytest.raises(PartialCheckpointError, match=r"head\.bias: missing") as error:
        SCORECheckpointer(Toy(), require_complete=True).load(without_bias)
    assert "ALLOW_PARTIAL_WEIGHTS" in str(error.value)

    wider = _save_state(tmp_path / "wider.pth", Toy(width=6).state_dict())
    with pytest.raises(PartialCheckpointError) as error:
        SCORECheckpointer(Toy(), require_complete=True).load(wider)
    message = str(error.value)
    assert "head.weight: (6, 3) in the checkpoint, (4, 3) in the model" in message
    assert "head.bias: (6,) in the checkpoint, (4,) in the model" in message

    # Training (require_complete False): loaded, with the table of what was and was not.
    model = Toy()
    with caplog.at_level(logging.WARNING, logger="fvcore.common.checkpoint"):
        SCORECheckpointer(model).load(without_bias)
    assert torch.equal(model.head.weight, full["head.weight"])
    table = caplog.text[caplog.text.index("Partial load") :]
    assert "missing (trained)" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| head")}
    assert [c.strip() for c in rows["head.weight"].split("|")[2:6]] == ["1", "0", "0", "0"]
    assert [c.strip() for c in rows["head.bias"].split("|")[2:6]] == ["0", "1", "0", "0"]
