"""Federated continual learning: a run as a sequence of stages over the same clients (``[continual]``, docs/continual.md)."""
