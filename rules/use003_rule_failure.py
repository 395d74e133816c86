"""USE003: a rule failed on a file (an auditor bug, reported rather than hidden)."""

from auditor.finding import Severity
from auditor.rule import StaticRule


class RuleFailure(StaticRule):
    """
    ## What it does
    Reports that one of auditor's own rules raised an exception on this file. The other
    rules still ran; `--debug` prints the traceback.

    ## Why is this bad?
    It is a bug in auditor, not in your code, but it means one check did not look at this
    file. It is reported so that the gap is visible; please file it with the traceback.

    ## Example
    ```python
    # any file that triggers the bug
    ```

    ## Use instead
    ```python
    # auditor: ignore[USE003]  (until the rule is fixed)
    ```
    """

    code = "USE003"
    name = "rule-failure"
    category = "usage"
    severity = Severity.ERROR
    examples_are_tests = False
    message = "rule failed on this file: {detail}"
    fix = "Run with --debug and report the traceback; suppress with # auditor: ignore[USE003] meanwhile."

    def check(self, ctx):
        return ()  # reported by the engine
