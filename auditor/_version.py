"""The one place the version lives (read by setup.cfg and by `--version`, without importing metadata)."""

__version__ = "0.1.0"
