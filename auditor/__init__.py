"""auditor: a linter for transfer-learning code and models.

The package root stays import-light on purpose: `auditor check` runs in pre-commit hooks, so
nothing here may import torch, tensorflow or keras. `Pipeline` and `audit` (the contract's
Python API) are resolved lazily on first use.
"""

from auditor._version import __version__

__all__ = ["Pipeline", "audit", "__version__"]


def __getattr__(name: str):
    if name == "Pipeline":
        from auditor.pipeline import Pipeline

        return Pipeline
    if name == "audit":
        from auditor.dynamic.audit import audit

        return audit
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
