"""The one path from named arrays to bytes (safetensors, never pickle): what a network transport sends."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from secure_ffm.engine.wire import arrays_from_bytes, arrays_to_bytes

arrays = st.dictionaries(
    st.text(st.characters(codec="ascii", min_codepoint=48, max_codepoint=122), min_size=1, max_size=12),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64]), hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_named_arrays_round_trip_exactly(named):
    back = arrays_from_bytes(arrays_to_bytes(named))
    assert back.keys() == named.keys()
    for name, value in named.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)


def test_the_bytes_are_safetensors_not_a_pickle():
    data = arrays_to_bytes({"w": np.arange(4, dtype=np.float32)}, metadata={"round": "3"})
    header_length = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and header_length < len(data)  # a JSON header, as safetensors writes
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)


def test_non_contiguous_arrays_are_written_as_their_values():
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(arrays_from_bytes(arrays_to_bytes({"t": matrix.T}))["t"], matrix.T)


def test_to_jsonable_gives_what_json_can_hold():
    import json

    import torch

    from secure_ffm.engine.wire import to_jsonable

    value = {1: (np.float32(2.5), float("nan"), np.arange(3), torch.tensor([1.5, float("inf")]), "text")}
    assert json.loads(json.dumps(to_jsonable(value))) == {"1": [2.5, None, [0, 1, 2], [1.5, None], "text"]}
