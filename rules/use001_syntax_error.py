"""USE001: a file that does not parse."""

from auditor.finding import Severity
from auditor.rule import StaticRule


class SyntaxErrorRule(StaticRule):
    """
    ## What it does
    Reports a Python file, or a notebook code cell, that does not parse.

    ## Why is this bad?
    None of the other checks can read a file that does not parse, so its problems stay
    hidden. In a notebook only the broken cell is skipped; the other cells are still checked.

    ## Example
    ```python
    model.compile(optimizer="adam" loss="categorical_crossentropy")
    ```

    ## Use instead
    ```python
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    ```
    """

    code = "USE001"
    name = "syntax-error"
    category = "usage"
    severity = Severity.ERROR
    message = "syntax error: {detail}"
    fix = "Fix the syntax error; auditor checks the file once it parses."

    def check(self, ctx):
        return ()  # reported by the engine, which is the one that parses
