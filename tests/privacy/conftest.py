import os

import pytest


@pytest.fixture()
def umask_022():
    """The usual umask (files 0o644), whatever the test runner's is."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)
