"""`audit(pipeline) -> Report`: run every selected dynamic probe and restore everything.

The loop is framework-neutral: a context (one per framework: `torch_context.TorchContext`,
`keras_context.KerasContext`) owns the snapshot, the shared passes and the restore; probes are the dynamic rules
under `rules/`. Each probe runs in its own try/finally, so a probe that raises becomes a
USE003 finding and the model is still restored bit for bit before the next probe runs, and
once more at the very end, also on a timeout or Ctrl-C.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any, Callable, Iterable

from auditor.errors import UsageFailure
from auditor.finding import Finding, Severity
from auditor.report import Report


class AuditTimeout(UsageFailure):
    """The audit ran past --timeout (exit 2)."""


def audit(
    pipeline: Any,
    *,
    select: Iterable[str] | str | None = None,
    ignore: Iterable[str] | str | None = None,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    source: str | None = None,
    selection: Any = None,
) -> Report:
    """Probe `pipeline` (a `Pipeline`, or a bare model) and return a `Report`.

    `select`/`ignore` take codes or prefixes like the CLI. `timeout` (seconds) stops the
    audit with `AuditTimeout` after restoring the model. `progress` receives one line per
    probe. Raises `UsageFailure` (a one-line message) when the pipeline cannot be audited.
    """
    from auditor.pipeline import Pipeline
    from auditor.registry import Selection, split_codes

    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline(pipeline)
    if selection is None:
        selection = Selection(split_codes(select) if select is not None else (), split_codes(ignore) if ignore is not None else ())
    rules = selection.rules(kind="dynamic")
    context = make_context(pipeline, source)
    return run_probes(context, rules, timeout=timeout, progress=progress)


def make_context(pipeline: Any, source: str | None = None) -> Any:
    """The framework context for a pipeline; imports only that framework."""
    framework = pipeline.framework
    if framework == "torch":
        from auditor.dynamic.torch_context import TorchContext

        return TorchContext(pipeline, source=source)
    if framework == "keras":
        from auditor.dynamic.keras_context import KerasContext

        return KerasContext(pipeline, source=source)
    raise UsageFailure(f"cannot audit a {type(pipeline.model).__module__}.{type(pipeline.model).__name__}: expected a torch.nn.Module or a keras.Model")


def run_probes(context: Any, rules: list, *, timeout: float | None = None, progress: Callable[[str], None] | None = None, debug: bool = False) -> Report:
    """Run `rules` against `context`; `debug` prints the traceback of a probe that fails."""
    findings: list[Finding] = []
    skipped = []
    deadline = _Deadline(timeout)
    probe_warnings: list[str] = []
    current = "setup"
    try:
        with deadline:
            if context.has_forward:
                current = "first forward pass"
                context.eval_pass()  # fail fast (exit 2) when the sample does not fit
            for index, rule_class in enumerate(rules, 1):
                if context.framework not in rule_class.frameworks or (rule_class.needs == "forward" and not context.has_forward):
                    skipped.append(rule_class.code)
                    continue
                current = f"{rule_class.code} {rule_class.name}"
                if progress:
                    progress(f"[{index}/{len(rules)}] {current}")
                started = time.perf_counter()
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        findings.extend(rule_class().probe(context) or ())
                    _note_warnings(probe_warnings, rule_class.code, caught)
                except (UsageFailure, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - one probe's bug must not hide the others
                    findings.append(_probe_failure(rule_class, exc, context, debug))
                finally:
                    context.restore()
                    if progress:
                        progress(f"      {current}: {time.perf_counter() - started:.2f}s")
    except _Expired:
        raise AuditTimeout(f"the audit ran past --timeout {timeout:g}s (during {current}); the model was restored") from None
    finally:
        context.restore()
    notes = list(getattr(context, "notes", []))
    notes.extend(probe_warnings[:MAX_WARNING_NOTES])
    if skipped and not context.has_forward:
        notes.append("these probes need a model with a forward pass and did not run: " + ", ".join(skipped))
    findings.sort(key=lambda f: (-f.severity.rank, f.rule, f.target or ""))
    return Report(findings=findings, files_checked=1, notes=notes, audited=getattr(context, "source", None) or "<pipeline>")


#: framework warnings raised while probing go to the report's notes, not to stderr (they
#: come from the probes' own calls, e.g. a loss warned about the softmax HED102 reports)
MAX_WARNING_NOTES = 5


def _note_warnings(notes: list[str], code: str, caught: list) -> None:
    """User and runtime warnings, once each; deprecation chatter is dropped."""
    for item in caught:
        if not issubclass(item.category, (UserWarning, RuntimeWarning)):
            continue
        text = str(item.message).strip().splitlines()[0] if str(item.message).strip() else item.category.__name__
        if any(note.endswith(f"{item.category.__name__}: {text}") for note in notes):
            continue
        notes.append(f"warning while probing ({code}): {item.category.__name__}: {text}")


def _probe_failure(rule_class: Any, exc: BaseException, context: Any, debug: bool) -> Finding:
    detail = f"{rule_class.code} raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return Finding(
        rule="USE003",
        name="rule-failure",
        category="usage",
        severity=Severity.ERROR,
        message=f"probe failed: {detail}",
        fix="Run with --debug and report the traceback; the other probes still ran and the model was restored.",
        path=getattr(context, "source", None),
        target=rule_class.code,
        evidence={},
    )


class _Expired(BaseException):
    """Raised by the alarm; a BaseException so that probes' `except Exception` cannot eat it."""


class _Deadline:
    """SIGALRM-based timeout on the main thread; a no-op elsewhere or without a timeout."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.previous: Any = None
        self.armed = False

    def __enter__(self) -> "_Deadline":
        import signal
        import threading

        if self.seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.armed = True
        return self

    def _expire(self, signum: int, frame: Any) -> None:
        raise _Expired()

    def __exit__(self, *exc: Any) -> None:
        if self.armed:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
