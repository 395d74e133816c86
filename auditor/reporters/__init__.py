"""Output formats. Each reporter renders a whole `Report` to a text stream; `--format`
choices come from `REPORTERS`, so adding a format is adding a module and one entry here."""

from __future__ import annotations

from typing import Protocol, TextIO

from auditor.report import Report


class Reporter(Protocol):
    def render(self, report: Report, out: TextIO, *, color: bool, quiet: bool) -> None: ...


def reporters() -> dict[str, type]:
    """Imported on use: a pre-commit run that prints text never loads the XML machinery."""
    from auditor.reporters.github import GithubReporter
    from auditor.reporters.json_reporter import JsonReporter
    from auditor.reporters.junit import JunitReporter
    from auditor.reporters.sarif import SarifReporter
    from auditor.reporters.text import TextReporter

    return {"text": TextReporter, "json": JsonReporter, "sarif": SarifReporter, "junit": JunitReporter, "github": GithubReporter}


#: the --format choices (kept as a literal so listing them costs no imports; a test checks
#: it equals reporters())
FORMATS = ("text", "json", "sarif", "junit", "github")
