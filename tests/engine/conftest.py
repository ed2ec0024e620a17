"""Engine fixtures: the tiny config as a file and a finished run of it (tests/engine/tiny_run.py)."""

from pathlib import Path

import pytest
from tiny_run import TINY, train  # tests/engine/tiny_run.py (on sys.path under pytest)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def finished_run(tiny_config, tmp_path_factory) -> Path:
    """A run directory of TINY after its 2 rounds (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(tiny_config, out) == 0
    return out
