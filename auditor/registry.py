"""Rule discovery and selection.

Rules are found by walking the `auditor.rules` package (Fixit's way), so adding a rule is
adding a module. Selection follows flake8's decision engine: codes or prefixes, and when both
`select` and `ignore` match a code, the longer (more specific) prefix wins.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Iterable

from auditor.rule import Rule


class SelectionError(ValueError):
    """An unknown code or prefix in --select/--ignore/config (exit 2)."""


@lru_cache(maxsize=1)
def all_rules() -> tuple[type[Rule], ...]:
    import auditor.rules as package

    found: dict[str, type[Rule]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Rule) and value.code and value.__module__ == module.__name__:
                if value.code in found and found[value.code] is not value:
                    raise RuntimeError(f"duplicate rule code {value.code}")
                found[value.code] = value
    return tuple(found[c] for c in sorted(found))


def rule_by_code(code: str) -> type[Rule] | None:
    wanted = code.strip().upper()
    for rule in all_rules():
        if rule.code == wanted or rule.name == code.strip().lower():
            return rule
    return None


def _normalise(items: Iterable[str], what: str) -> list[str]:
    """Upper-case codes/prefixes; translate rule names to codes; refuse unknown ones."""
    rules = all_rules()
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item.upper() == "ALL":
            out.append("")
            continue
        by_name = [r.code for r in rules if r.name == item.lower()]
        if by_name:
            out.append(by_name[0])
            continue
        prefix = item.upper()
        if not any(r.code.startswith(prefix) for r in rules):
            raise SelectionError(f"unknown rule code or prefix in {what}: {item!r} (see `auditor rules`)")
        out.append(prefix)
    return out


def split_codes(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p for p in (s.strip() for s in value.replace(";", ",").split(",")) if p]
    return [str(v).strip() for v in value if str(v).strip()]


class Selection:
    """Decides, per code, whether a rule runs (and, per file, whether it is ignored)."""

    def __init__(self, select: Iterable[str] = (), ignore: Iterable[str] = (), extend_select: Iterable[str] = ()):
        self.select = _normalise(select, "select")
        self.extend_select = _normalise(extend_select, "select")
        self.ignore = _normalise(ignore, "ignore")

    def _longest(self, code: str, prefixes: list[str]) -> int:
        return max((len(p) for p in prefixes if code.startswith(p)), default=-1)

    def enabled(self, rule: type[Rule]) -> bool:
        selected = self.select + self.extend_select
        sel = self._longest(rule.code, selected)
        ign = self._longest(rule.code, self.ignore)
        if sel < 0:
            if self.select:  # explicit selection that does not name this rule
                return False
            sel = 0 if rule.enabled_by_default else -1
            if sel < 0:
                return False
        elif sel == 0 and not rule.enabled_by_default:  # "ALL" does not switch on experiments
            return False
        return sel > ign if ign >= 0 else True

    def rules(self, kind: str | None = None) -> list[type[Rule]]:
        return [r for r in all_rules() if self.enabled(r) and (kind is None or r.kind == kind)]
