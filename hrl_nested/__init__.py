"""hrl_nested: nested learning for hierarchical reinforcement learning in PyTorch."""

from hrl_nested.batch import Batch

__version__ = "0.1.0"
__all__ = ["Batch", "__version__"]
