"""Models: the :class:`FederatedModel` contract and the ``[model] arch`` registry.

Registered architectures: ``cnn``, ``tanh-cnn`` (small, for DP-SGD) and ``vit`` for greyscale or RGB images (28x28
for Fashion-MNIST), ``hf-text`` for text. Build one with :func:`build_model`.
"""

from secure_ffm.models import tanh_cnn, text, vision  # noqa: E402,F401  (register the built-in architectures)
from secure_ffm.models.base import Batch, EncodedData, FederatedModel, NamedArrays
from secure_ffm.models.registry import MODELS, ModelBuilder, build_model, register_model
from secure_ffm.models.size import update_nbytes, update_parameter_count

__all__ = [
    "MODELS",
    "Batch",
    "EncodedData",
    "FederatedModel",
    "ModelBuilder",
    "NamedArrays",
    "build_model",
    "register_model",
    "update_nbytes",
    "update_parameter_count",
]
