"""pccore: a plugin-based PyTorch framework for training deep predictive coding networks."""

from pccore.components import Component
from pccore.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Component", "hookimpl", "__version__"]
