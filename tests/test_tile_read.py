"""The fast tile read (runtime/tile_read.py) runs as one Python call per read: the
simulator's ``mvm`` and ``adc`` instructions each call one function compiled from the
stages, the NumPy backend one per block of rows, and no stage is called on its own (a
call costs as much as a small read's arithmetic). Their results are checked against the
interpreter in tests/test_numpy_backend.py and tests/test_simulator.py."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable

import pytest
from test_numpy_backend import TARGET, snu_stack, spikes  # tests/ is on sys.path

from snuc.runtime import tile_read
from snuc.runtime.numpy_backend import Plan
from snuc.runtime.simulator import SimPlan

STEPS = 5


def _python_calls(run: Callable[[], object]) -> Counter:
    """The Python functions that ``run()`` calls, counted by source file (a compiled
    read's: its label, such as ``<tile 3 mvm>``)."""
    calls: Counter = Counter()

    def profile(frame, event, arg):
        if event == "call":
            calls[frame.f_code.co_filename] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def _reads(calls: Counter, kind: str) -> int:
    return sum(n for name, n in calls.items() if name.startswith("<tile ") and f" {kind}>" in name)


@pytest.mark.parametrize("mode", ["quantized", "pcm"])
def test_the_simulator_reads_a_tile_in_one_call_per_instruction(mode):
    plan = SimPlan.build(snu_stack(), mode=mode, target=TARGET)
    x = spikes((STEPS, 1, 6), seed=1)
    plan.run(x)  # the first run prepares the windows
    calls = _python_calls(lambda: plan.run(x))
    assert tile_read.__file__ not in calls
    assert _reads(calls, "mvm") == _reads(calls, "adc") == STEPS * len(plan.chips)


@pytest.mark.parametrize("mode", ["quantized", "pcm"])
def test_the_numpy_backend_reads_a_block_of_rows_in_one_call(mode):
    plan = Plan.build(snu_stack(recurrent=(False, False, False)), mode=mode, target=TARGET)
    x = spikes((STEPS, 2, 6), seed=1)
    plan.run(x)
    calls = _python_calls(lambda: plan.run(x))
    assert tile_read.__file__ not in calls
    # Layers without recurrence read all steps' rows at once: one block per tile.
    assert _reads(calls, "read") == len(plan.chips)
