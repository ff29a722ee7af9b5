"""cytogen: deep generative models of fluorescence-microscopy cell images."""

from cytogen.errors import CytogenError

__version__ = "0.1.0"
__all__ = ["CytogenError", "__version__"]
