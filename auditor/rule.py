"""Base classes for rules. A rule is one class in one module under `rules/`.

The class docstring is the rule's documentation and the single source for `auditor explain`,
`auditor rules` (first paragraph of "What it does") and, later, SARIF descriptions. It must
carry the headings in `REQUIRED_HEADINGS`; the registry refuses a rule without them, so docs
cannot drift away from code.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

from auditor.finding import CATEGORIES, Finding, Severity

if TYPE_CHECKING:  # pragma: no cover
    from auditor.analysis.context import ModuleContext

CODE_RE = re.compile(r"^[A-Z]{3}\d{3}$")
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
REQUIRED_HEADINGS = ("## What it does", "## Why is this bad?", "## Example", "## Use instead")


class RuleDefinitionError(TypeError):
    """A rule class that breaks the registry's invariants (raised at import time)."""


class Rule:
    """Metadata shared by static and dynamic rules."""

    code: ClassVar[str] = ""
    name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    severity: ClassVar[Severity] = Severity.WARNING
    kind: ClassVar[str] = "static"
    message: ClassVar[str] = ""
    fix: ClassVar[str] = ""
    #: off unless selected explicitly (numbering policy: 9xx codes are experimental)
    enabled_by_default: ClassVar[bool] = True
    #: cheap prefilter: the rule runs only on modules that mention one of these words
    requires: ClassVar[frozenset[str]] = frozenset()
    #: the docstring's Example must trigger the rule and its "Use instead" must not (tested);
    #: False only for engine-reported rules whose trigger is not a snippet
    examples_are_tests: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.code:  # intermediate base classes
            return
        problems = []
        if not CODE_RE.match(cls.code):
            problems.append(f"code {cls.code!r} must look like ABC123")
        if not NAME_RE.match(cls.name):
            problems.append(f"name {cls.name!r} must be kebab-case")
        if cls.category not in CATEGORIES:
            problems.append(f"category {cls.category!r} is not one of {', '.join(CATEGORIES)}")
        doc = cls.documentation()
        for heading in REQUIRED_HEADINGS:
            if heading not in doc:
                problems.append(f"docstring lacks {heading!r}")
        if not cls.message or not cls.fix:
            problems.append("message and fix templates are required")
        if problems:
            raise RuleDefinitionError(f"{cls.__module__}.{cls.__name__}: " + "; ".join(problems))

    @classmethod
    def documentation(cls) -> str:
        """The class's own docstring, dedented (inspect.cleandoc without importing inspect)."""
        return _cleandoc(cls.__dict__.get("__doc__") or "")

    @classmethod
    def summary(cls) -> str:
        """First sentence-paragraph under "## What it does"."""
        doc = cls.documentation()
        _, _, rest = doc.partition("## What it does")
        paragraph = rest.strip().split("\n\n", 1)[0]
        return " ".join(paragraph.split())

    @classmethod
    def section(cls, heading: str) -> str:
        """The text under one `## heading`, without the heading."""
        doc = cls.documentation()
        marker = f"## {heading}"
        if marker not in doc:
            return ""
        rest = doc.split(marker, 1)[1]
        return rest.split("\n## ", 1)[0].strip()

    @classmethod
    def code_examples(cls, heading: str) -> list[str]:
        """The fenced python blocks under one heading (used by the docs-are-tests meta-test)."""
        return re.findall(r"```python\n(.*?)```", cls.section(heading), flags=re.S)


class StaticRule(Rule):
    """A rule that reads source. It never imports a framework."""

    kind: ClassVar[str] = "static"

    def check(self, ctx: "ModuleContext") -> Iterable[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finding(
        self,
        ctx: "ModuleContext",
        node: ast.AST | None,
        *,
        severity: Severity | None = None,
        evidence: dict[str, Any] | None = None,
        fix: str | None = None,
        **params: Any,
    ) -> Finding:
        """Build a finding at `node`, filling the message and fix templates with `params`."""
        loc = ctx.location(node)
        return Finding(
            rule=self.code,
            name=self.name,
            category=self.category,
            severity=severity or self.severity,
            message=_fill(self.message, params),
            fix=fix if fix is not None else _fill(self.fix, params),
            path=ctx.display_path,
            line=loc.line,
            column=loc.column,
            end_line=loc.end_line,
            end_column=loc.end_column,
            cell=loc.cell,
            evidence=dict(evidence or {}),
        )


class DynamicRule(Rule):
    """A rule that probes a loaded model. Frameworks are imported inside `probe`, never at
    module level, so listing rules and static checks stay framework-free.

    `probe(ctx)` receives the audit context of one framework (`auditor.dynamic.torch_context.
    TorchContext` for PyTorch): shared, memoised measurements (one eval pass, one train pass,
    ...) so that five probes cost a handful of forward passes, not five times as many. The
    engine restores the model after every probe, also when it raises.
    """

    kind: ClassVar[str] = "dynamic"
    examples_are_tests: ClassVar[bool] = False
    #: what the probe needs: "forward" (a model it can run) or "tensors" (a state dict is enough)
    needs: ClassVar[str] = "forward"
    #: the verdict depends on real data: on a synthetic sample its findings are downgraded to
    #: info and say that their confidence is lower
    data_dependent: ClassVar[bool] = False
    #: frameworks the probe knows how to measure
    frameworks: ClassVar[tuple[str, ...]] = ("torch",)

    def probe(self, ctx: Any) -> Iterable[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finding(
        self,
        ctx: Any,
        target: str | None,
        *,
        severity: Severity | None = None,
        evidence: dict[str, Any] | None = None,
        fix: str | None = None,
        **params: Any,
    ) -> Finding:
        """A finding on `target` (module, parameter or tensor name) with measured `evidence`."""
        evidence = dict(evidence or {})
        severity = severity or self.severity
        if self.data_dependent and getattr(ctx, "synthetic", False):
            evidence["confidence"] = "low: measured on a synthetic sample, pass --sample"
            severity = Severity.INFO
        return Finding(
            rule=self.code,
            name=self.name,
            category=self.category,
            severity=severity,
            message=_fill(self.message, params),
            fix=fix if fix is not None else _fill(self.fix, params),
            path=getattr(ctx, "source", None),
            target=target,
            evidence=evidence,
        )


def _cleandoc(doc: str) -> str:
    lines = doc.expandtabs().split("\n")
    indents = [len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()]
    margin = min(indents) if indents else 0
    body = [lines[0].strip()] + [line[margin:].rstrip() for line in lines[1:]]
    while body and not body[0]:
        body.pop(0)
    while body and not body[-1]:
        body.pop()
    return "\n".join(body)


class _SafeDict(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _fill(template: str, params: dict[str, Any]) -> str:
    return template.format_map(_SafeDict(params))
