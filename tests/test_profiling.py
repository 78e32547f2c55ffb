"""Stage labels of score/profiling.py: transparent to the wrapped function, visible to torch.profiler."""

import torch
from torch.profiler import ProfilerActivity, profile

from score.profiling import profiled


@profiled("score.test_stage")
def _double(x, *, scale=2):
    """Docstring kept."""
    return x * scale


def test_profiled_returns_the_result_and_keeps_the_name():
    x = torch.arange(4.0)
    assert torch.equal(_double(x, scale=3), x * 3)
    assert _double.__name__ == "_double" and _double.__doc__ == "Docstring kept."


def test_profiled_range_appears_in_a_profile_once_per_call():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _double(torch.ones(3))
        _double(torch.ones(3))
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("score.test_stage") == 2
