"""What a pool worker imports to serve a run without DP: no privacy accountant (it pulls in opacus and scipy).

Every worker imports ``secure_ffm.run.deployment`` (``client_session``). When that module imported the accountant at
its top (2026-12-07, for the node-ledger checks), each worker of a pooled CNN run paid about 3 s before its first
reply: 4.4 against 1.5 s to the first client's update for the ``vs_flower.py`` large case on 2 workers.
"""

import subprocess
import sys


def test_the_module_every_pool_worker_imports_loads_no_accountant():
    code = (
        "import sys\nimport secure_ffm.run.deployment, secure_ffm.transports.worker_pool\n"
        "print(sorted(m for m in ('secure_ffm.privacy.accounting', 'opacus', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
