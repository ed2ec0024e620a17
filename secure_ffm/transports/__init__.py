"""Transports: how the round orchestrator reaches clients (in this process, or over the network)."""

from secure_ffm.transports.base import FIT, FitReply, FitRequest, Transport

__all__ = ["FIT", "FitReply", "FitRequest", "Transport"]
