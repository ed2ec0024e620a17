"""secure-ffm: privacy-hardened federated learning for foundation models.

Federated fine-tuning and pre-training of transformers (arXiv 2305.11414) with
differential privacy, secure aggregation and leakage audits.
"""

__version__ = "0.1.0"
