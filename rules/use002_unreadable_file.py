"""USE002: a file that cannot be read as Python source."""

from auditor.finding import Severity
from auditor.rule import StaticRule


class UnreadableFile(StaticRule):
    """
    ## What it does
    Reports a file that cannot be read as Python source: undecodable bytes, a binary file,
    a notebook that is not valid JSON or not a Python notebook, or a file over the size limit.

    ## Why is this bad?
    A file auditor cannot read is a file nobody checked. It is reported so that a CI gate
    does not pass silently over it.

    ## Example
    ```python
    # a .py file saved in an encoding its coding cookie does not declare
    ```

    ## Use instead
    ```python
    # -*- coding: utf-8 -*-
    ```
    """

    code = "USE002"
    name = "unreadable-file"
    category = "usage"
    severity = Severity.ERROR
    examples_are_tests = False
    message = "cannot read this file: {detail}"
    fix = "Save the file as UTF-8 Python source (or valid notebook JSON), or exclude it."

    def check(self, ctx):
        return ()  # reported by the engine
