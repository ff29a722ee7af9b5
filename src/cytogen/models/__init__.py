"""Neural network models, built by name from a registry.

Every generator maps ``(B, C_in, [Z,] Y, X) -> (B, C_out, [Z,] Y, X)`` and exposes
``in_channels``, ``out_channels``, ``dims`` and ``size_multiple`` (the
:class:`~cytogen.models.protocol.Generator` protocol). To add one, write a file in this package
that decorates its class with ``@register_model("name")`` and import that file below (the
registry line); ``tests/models/test_contract.py`` then checks it in 2D and 3D automatically.
"""

from cytogen.models.protocol import Generator, check_spatial_size
from cytogen.models.registry import build_model, list_models, model_arguments, register_model

# Registry lines: importing a model file registers its models.
from cytogen.models import unet  # noqa: E402,F401  isort: skip
from cytogen.models import chain  # noqa: E402,F401  isort: skip
from cytogen.models import r2unet  # noqa: E402,F401  isort: skip
from cytogen.models import tfill  # noqa: E402,F401  isort: skip
from cytogen.models import discriminators  # noqa: E402,F401  isort: skip
from cytogen.models.unet import UNet  # noqa: E402  isort: skip
# The Statistical Cell VAEs: their own registry (VAES), not generators, not in MODELS.
from cytogen.models.vae import VAES, ReferenceVAE, TargetVAE, build_vae  # noqa: E402  isort: skip

__all__ = ["VAES", "Generator", "ReferenceVAE", "TargetVAE", "UNet", "build_model", "build_vae",
           "check_spatial_size", "list_models", "model_arguments", "register_model"]
