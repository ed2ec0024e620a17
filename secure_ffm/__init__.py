"""secure-ffm: privacy-hardened federated learning for foundation models.

Federated fine-tuning and pre-training of transformers (arXiv 2305.11414) with
differential privacy, secure aggregation and leakage audits.
"""

__version__ = "0.1.0"

# the machine's busy CPU time at the first import: ``run.workers = 0`` later reads how many cores other processes
# used meanwhile (secure_ffm.machine_load)
from secure_ffm import machine_load as _machine_load  # noqa: E402, F401
