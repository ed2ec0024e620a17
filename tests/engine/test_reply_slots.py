"""A forked worker's replies through shared memory (secure_ffm.transports.worker_pool._ReplySlots): the arrays arrive
bitwise, the slots alternate, what does not fit goes down the pipe, and a header that points outside its slot is refused."""

import json
import os

import numpy as np
import pytest

from secure_ffm.engine.aggregation import AggregationError
from secure_ffm.transports.worker_pool import _ReplySlots

ARRAYS = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "counts": np.array([3, -1], dtype=np.int64),
    "mask": np.array([True, False, True]),
    "scalar": np.float64(2.5),
    "strided": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
}


def same(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == np.asarray(b[k]).dtype and np.array_equal(a[k], b[k]) for k in a)


def test_arrays_written_to_a_slot_are_read_back_bitwise_as_copies():
    slots = _ReplySlots(4096)
    shared = slots.write(ARRAYS)
    back = slots.read(shared)
    assert same(back, ARRAYS) and back["strided"].shape == (3, 2)
    slots.write({"conv.weight": np.zeros((2, 3, 4), dtype=np.float32)})  # the slot after next is this one again
    slots.write({"conv.weight": np.zeros((2, 3, 4), dtype=np.float32)})
    assert same(back, ARRAYS)  # what was read is the run's own copy


def test_the_slots_alternate():
    slots = _ReplySlots(1024)
    assert [slots.write({"x": np.ones(4)})["slot"] for _ in range(3)] == [0, 1, 0]


@pytest.mark.parametrize("arrays", [{"big": np.zeros(200, dtype=np.float64)}, {"c": np.zeros(2, dtype=np.complex64)}])
def test_what_does_not_fit_or_has_another_kind_is_left_to_the_pipe(arrays):
    slots = _ReplySlots(1024)
    assert slots.write(arrays) is None
    assert slots.write({"x": np.ones(2)})["slot"] == 0  # nothing was written for the refused reply


@pytest.mark.parametrize(
    "shared",
    [
        {"slot": 2, "arrays": []},
        {"slot": True, "arrays": []},
        {"slot": 0, "arrays": [["x", "<f8", [200], 0]]},  # past the slot's end
        {"slot": 1, "arrays": [["x", "<f8", [2], 0]]},  # in the other slot
        {"slot": 0, "arrays": [["x", "|O", [2], 0]]},
        {"slot": 0, "arrays": [["x", "<f8", [-2], 0]]},
        {"slot": 0, "arrays": [["x", "<f8", [2], -8]]},
        {"slot": 0, "arrays": [["x", "<f8", [2]]]},
        {"slot": 0, "arrays": [["x", "<f8", 2, 0]]},
        {"slot": 0, "arrays": [["x", "not a dtype", [2], 0]]},
    ],
)
def test_a_header_pointing_outside_its_slot_or_at_another_kind_is_refused(shared):
    with pytest.raises(AggregationError, match="worker's reply"):
        _ReplySlots(1024).read(shared)


def test_a_forked_child_writes_what_the_parent_reads():
    slots = _ReplySlots(4096)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, send the layout, leave without the test runner's exit handlers
        code = 1
        try:
            os.close(read_end)
            with os.fdopen(write_end, "w") as layout:
                json.dump(slots.write(ARRAYS), layout)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as layout:
        shared = json.load(layout)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert same(slots.read(shared), ARRAYS)
