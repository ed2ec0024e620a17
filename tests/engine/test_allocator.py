"""secure_ffm.allocator: glibc's malloc keeps freed memory for the next step instead of faulting it in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from secure_ffm.allocator import OPT_OUT, user_chose_malloc_settings

# A step that allocates, touches and frees 20 MB in five blocks, as a training step's activations and gradients do:
# with glibc's dynamic thresholds the freed top of the heap is trimmed and the next step faults every page in again.
FAULTS_PER_STEP = textwrap.dedent(
    """
    import resource
    import numpy as np
    from secure_ffm.allocator import keep_freed_memory
    applied = keep_freed_memory()

    def step():
        arrays = [np.ones(500_000) for _ in range(5)]
        return sum(float(a[-1]) for a in arrays)

    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
    """
)


def faults_per_step(**env: str) -> tuple[bool, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env={**environ, **env}, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_fixed_thresholds_stop_the_page_faults_of_a_repeated_step() -> None:
    default = faults_per_step(**{OPT_OUT: "default"})
    fixed = faults_per_step()
    assert default[0] is False and fixed[0] is True
    assert default[1] > 1000  # 20 MB of fresh pages: about 4,900 faults of 4 KiB
    assert fixed[1] < default[1] / 100


@pytest.mark.parametrize(
    ("environ", "chose"),
    [
        ({}, False),
        ({OPT_OUT: "default"}, True),
        ({OPT_OUT: "fixed"}, False),
        ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, True),
        ({"MALLOC_MMAP_THRESHOLD_": "1000000"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, True),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, False),
    ],
)
def test_the_users_own_malloc_settings_are_left_alone(environ: dict[str, str], chose: bool) -> None:
    assert user_chose_malloc_settings(environ) is chose
