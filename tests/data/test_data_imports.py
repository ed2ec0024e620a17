"""The data modules import no torch: reading a dataset needs none (secure_ffm.data.normalization imports it only
where it standardises tensors)."""

import subprocess
import sys


def test_importing_the_data_modules_imports_no_torch():
    code = "import sys\nimport secure_ffm.data, secure_ffm.data.load, secure_ffm.data.federate\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
