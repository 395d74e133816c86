"""Expanding the paths given on the command line into the files to check."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable

SOURCE_SUFFIXES = (".py", ".pyi", ".ipynb")
DEFAULT_EXCLUDE = (
    ".git", ".hg", ".svn", ".bzr", "__pycache__", ".tox", ".nox", ".venv", "venv", ".eggs",
    "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "__pypackages__",
)


class DiscoveryError(Exception):
    """A path that does not exist (exit 2)."""


def _excluded(path: Path, patterns: Iterable[str]) -> bool:
    text = path.as_posix()
    for pattern in patterns:
        if fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(text, pattern) or fnmatch.fnmatch(text, f"*/{pattern}"):
            return True
    return False


def discover(paths: Iterable[str], exclude: Iterable[str] = ()) -> list[Path]:
    """Files named explicitly are always checked (whatever their suffix); folders are walked
    for Python files and notebooks, skipping excluded and hidden tool folders."""
    patterns = tuple(DEFAULT_EXCLUDE) + tuple(exclude)
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DiscoveryError(f"{raw}: no such file or directory")
        if path.is_file():
            if path not in seen:
                seen.add(path)
                found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if not _excluded(root_path / d, patterns))
            for name in sorted(files):
                if not name.endswith(SOURCE_SUFFIXES):
                    continue
                file_path = root_path / name
                if _excluded(file_path, tuple(exclude)) or file_path in seen:
                    continue
                seen.add(file_path)
                found.append(file_path)
    return found
