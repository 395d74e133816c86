"""Errors that end a run with exit code 2 and one line on stderr."""


class UsageFailure(Exception):
    """A usage, configuration or loading problem (exit 2)."""
