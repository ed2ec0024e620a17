"""The set-up phase's pause of the cyclic garbage collector (secure_ffm.startup)."""

import gc

import pytest

from secure_ffm.startup import collector_paused


@pytest.fixture(autouse=True)
def restore_collector():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable() if enabled else gc.disable()


def test_the_collector_is_off_inside_and_back_after_with_the_objects_frozen():
    gc.enable()
    gc.unfreeze()
    with collector_paused():
        assert not gc.isenabled()
        kept = [object() for _ in range(10)]
    assert gc.isenabled() and gc.get_freeze_count() >= len(kept)


def test_a_collector_the_caller_turned_off_stays_off():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_the_collector_comes_back_when_the_block_raises():
    gc.enable()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("bad config")
    assert gc.isenabled()
