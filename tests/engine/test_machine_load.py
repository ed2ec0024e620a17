"""The cores other processes keep busy (secure_ffm.machine_load) and what ``run.workers = 0`` makes of them."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_ffm import machine_load
from secure_ffm.machine_load import CpuSample, busy_seconds, others_between

STAT = "cpu  8125709 90766 575061 5443712 20593 0 6637 11991 0 0"


def test_busy_seconds_count_every_state_but_idle_and_iowait():
    assert busy_seconds(STAT, 100) == pytest.approx((8125709 + 90766 + 575061 + 0 + 6637 + 11991) / 100)


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5 6 7 8", "intr 1 2 3", "cpu 1 2 3", ""])
def test_a_line_that_is_not_the_aggregate_cpu_line_is_refused(line):
    with pytest.raises(ValueError, match="aggregate cpu line"):
        busy_seconds(line, 100)


@settings(max_examples=100, deadline=None)
@given(
    wall=st.floats(0.2, 60.0),
    own=st.floats(0.0, 2.0),
    others=st.floats(0.0, 2.0),
)
def test_others_between_takes_this_process_off_the_machines_busy_time(wall, own, others):
    first = CpuSample(machine_busy_s=1000.0, own_s=5.0, wall_s=100.0)
    last = CpuSample(machine_busy_s=1000.0 + (own + others) * wall, own_s=5.0 + own * wall, wall_s=100.0 + wall)
    assert others_between(first, last) == pytest.approx(others, abs=1e-6)


@pytest.mark.parametrize("wall", [0.0, 0.19, 60.5, 3600.0])
def test_an_interval_too_short_or_too_long_to_tell_says_none(wall):
    first = CpuSample(machine_busy_s=10.0, own_s=1.0, wall_s=0.0)
    assert others_between(first, CpuSample(machine_busy_s=10.0 + wall, own_s=1.0, wall_s=wall)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_a_busy_loop_in_another_process_shows_as_about_one_core(tmp_path):
    import subprocess
    import sys
    import time

    first = machine_load.cpu_sample()
    loop = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 0.5\nwhile time.time() < end: pass"])
    loop.wait()
    time.sleep(0.05)
    others = others_between(first, machine_load.cpu_sample())
    # the loop's half second (its interpreter's start included) over about 0.6 s, plus whatever else the machine ran
    assert others is not None and others >= 0.6
