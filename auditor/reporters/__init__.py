"""Output formats. Each reporter renders a whole `Report` to a text stream; `--format`
choices come from `REPORTERS`, so adding a format is adding a module and one entry here."""

from __future__ import annotations

from typing import Protocol, TextIO

from auditor.report import Report


class Reporter(Protocol):
    def render(self, report: Report, out: TextIO, *, color: bool, quiet: bool) -> None: ...


#: format -> (module, class); modules are imported only when their format is used
_REGISTRY = {
    "text": ("auditor.reporters.text", "TextReporter"),
    "json": ("auditor.reporters.json_reporter", "JsonReporter"),
    "sarif": ("auditor.reporters.sarif", "SarifReporter"),
    "junit": ("auditor.reporters.junit", "JunitReporter"),
    "github": ("auditor.reporters.github", "GithubReporter"),
    "html": ("auditor.reporters.html", "HtmlReporter"),
}


def reporter_class(fmt: str) -> type:
    """The reporter for one format, importing only its module (a pre-commit run that prints
    text never loads the XML or SARIF machinery)."""
    import importlib

    module, name = _REGISTRY[fmt]
    return getattr(importlib.import_module(module), name)


def reporters() -> dict[str, type]:
    """Every reporter class by format (imports them all: for tests and listings)."""
    return {fmt: reporter_class(fmt) for fmt in _REGISTRY}


#: the --format choices (kept as a literal so listing them costs no imports; a test checks
#: it equals reporters())
FORMATS = ("text", "json", "sarif", "junit", "github", "html")
