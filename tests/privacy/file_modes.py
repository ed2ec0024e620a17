"""Files' permission bits, for the tests that check them (tests/privacy/test_*_files.py; the ``umask_022`` fixture is in
tests/privacy/conftest.py)."""

import os
import stat


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)
