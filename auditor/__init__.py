"""auditor: a linter for transfer-learning code and models.

The package root stays import-light on purpose: `auditor check` runs in pre-commit hooks, so
nothing here may import torch, tensorflow or keras.
"""

from auditor._version import __version__

__all__ = ["__version__"]
