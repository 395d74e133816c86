"""Running static rules over files: one parse per file, every rule on the same context, files
in parallel across cores, results cached by content.

A problem with one file (unreadable, syntax error, a rule that crashes on it) becomes a `USE`
finding for that file; it never aborts the run (flake8's weak point, avoided).
"""

from __future__ import annotations

import ast
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from auditor._version import __version__
from auditor.analysis.context import ModuleContext
from auditor.analysis.source import SourceError, SourceUnit, read_source_bytes, source_from_bytes
from auditor.finding import Finding
from auditor.registry import all_rules, rule_by_code
from auditor.rule import StaticRule
from auditor.suppress import is_suppressed, pragmas

#: below this many files a process pool costs more than it saves
PARALLEL_THRESHOLD = 8


class FileResult:
    """Findings of one file, their baseline fingerprints, and (for --debug) the tracebacks
    behind USE003 findings. Plain class: dataclasses cost import time on every hook run."""

    __slots__ = ("path", "findings", "fingerprints", "debug")

    def __init__(self, path: str, findings: list[Finding], fingerprints: list[str] | None = None, debug: list[str] | None = None):
        self.path = path
        self.findings = findings
        self.fingerprints = fingerprints or []
        self.debug = debug or []


def _usage(code: str, path: str, message: str, line: int = 1, column: int = 1, cell: int | None = None, evidence=None) -> Finding:
    rule = rule_by_code(code)
    assert rule is not None, code
    return Finding(
        rule=rule.code,
        name=rule.name,
        category=rule.category,
        severity=rule.severity,
        message=message,
        fix=rule.fix,
        path=path,
        line=line,
        column=column,
        cell=cell,
        evidence=dict(evidence or {}),
    )


def check_unit(unit: SourceUnit, codes: Sequence[str], debug: bool = False) -> FileResult:
    """All selected static rules over one source unit."""
    wanted = set(codes)
    rules = [r() for r in all_rules() if r.code in wanted and issubclass(r, StaticRule)]
    findings: list[Finding] = []
    debug_notes: list[str] = []
    for cell, line, msg in unit.broken_cells:
        findings.append(_usage("USE001", unit.path, f"syntax error in cell {cell}: {msg}", line=line, cell=cell))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like are not ours to report
            tree = ast.parse(unit.text, filename=unit.path)
    except SyntaxError as exc:
        findings.append(_usage("USE001", unit.path, f"syntax error: {exc.msg}", line=exc.lineno or 1, column=exc.offset or 1))
        return _finish(unit, findings, codes, debug_notes)
    except (ValueError, RecursionError, MemoryError) as exc:
        findings.append(_usage("USE002", unit.path, f"cannot parse: {type(exc).__name__}: {exc}"))
        return _finish(unit, findings, codes, debug_notes)
    try:
        ctx = ModuleContext(unit, tree)
    except RecursionError:
        findings.append(_usage("USE002", unit.path, "cannot analyse: expressions nested too deeply"))
        return _finish(unit, findings, codes, debug_notes)
    for rule in rules:
        if rule.requires and not ctx.mentions(*rule.requires):
            continue
        try:
            findings.extend(rule.check(ctx))
        except Exception as exc:  # noqa: BLE001 - one rule's bug must not stop the run
            findings.append(
                _usage("USE003", unit.path, f"rule {rule.code} ({rule.name}) failed on this file: {type(exc).__name__}: {exc}")
            )
            import traceback

            debug_notes.append(f"{unit.path}: {rule.code}\n{traceback.format_exc()}")
    return _finish(unit, findings, codes, debug_notes)


def _finish(unit: SourceUnit, findings: list[Finding], codes: Sequence[str], debug_notes: list[str]) -> FileResult:
    wanted = set(codes)
    lines = unit.text.split("\n")
    table = pragmas(lines, unit.cell_lines)
    kept = [f for f in findings if f.rule in wanted and not is_suppressed(f, table)]
    kept = _dedupe(sorted(kept, key=Finding.sort_key))
    fingerprints = [_fingerprint(f, unit, lines) for f in kept]
    return FileResult(unit.path, kept, fingerprints, debug_notes)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    out, seen = [], set()
    for f in findings:
        key = (f.rule, f.cell, f.line, f.column, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _fingerprint(finding: Finding, unit: SourceUnit, lines: list[str]) -> str:
    """Stable across edits elsewhere in the file: rule, path and the flagged line's text."""
    import hashlib

    text = ""
    if finding.line:
        if unit.cell_lines is None:
            idx = finding.line - 1
        else:
            idx = next((i for i, cl in enumerate(unit.cell_lines) if cl == (finding.cell, finding.line)), -1)
        if 0 <= idx < len(lines):
            text = lines[idx].strip()
    raw = f"{finding.rule}\0{finding.path}\0{text}"
    return hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# ----------------------------------------------------------------------------- files
def check_file(path: str, display: str, codes: Sequence[str], debug: bool, cache_dir: str | None) -> FileResult:
    try:
        raw = read_source_bytes(Path(path))
    except SourceError as exc:
        return FileResult(display, [_usage("USE002", display, str(exc))])
    key = _cache_key(raw, display, codes) if cache_dir else None
    if key:
        cached = _cache_get(cache_dir, key)
        if cached is not None:
            return cached
    try:
        unit = source_from_bytes(raw, display)
    except SourceError as exc:
        result = FileResult(display, [_usage("USE002", display, str(exc))])
    else:
        result = check_unit(unit, codes, debug)
    if key and not result.debug:
        _cache_put(cache_dir, key, result)
    return result


def _worker(args: tuple) -> FileResult:
    return check_file(*args)


def check_paths(
    files: Sequence[tuple[str, str]],
    codes: Sequence[str],
    *,
    jobs: int | None = None,
    debug: bool = False,
    cache_dir: str | None = None,
) -> list[FileResult]:
    """Check (path, display-name) pairs; in parallel when there are enough of them."""
    tasks = [(path, display, tuple(codes), debug, cache_dir) for path, display in files]
    workers = jobs if jobs and jobs > 0 else (os.cpu_count() or 1)
    if workers <= 1 or len(tasks) < PARALLEL_THRESHOLD:
        return [_worker(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    try:
        mp_context = multiprocessing.get_context("fork") if sys.platform != "win32" else None
    except ValueError:  # pragma: no cover
        mp_context = None
    chunk = max(1, len(tasks) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp_context) as pool:
        return list(pool.map(_worker, tasks, chunksize=chunk))


# ----------------------------------------------------------------------------- cache
def default_cache_dir() -> str:
    if os.environ.get("AUDITOR_CACHE_DIR"):
        return os.environ["AUDITOR_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "auditor")


_RULES_STAMP: str | None = None


def _rules_stamp() -> str:
    """Changes whenever a rule or engine module changes, so a cache never outlives the code."""
    global _RULES_STAMP
    import hashlib

    if _RULES_STAMP is None:
        import auditor
        import auditor.rules

        digest = hashlib.sha1(__version__.encode())
        for folder in (Path(auditor.__file__).parent, Path(auditor.rules.__file__).parent):
            for file in sorted(folder.rglob("*.py")):
                st = file.stat()
                digest.update(f"{file.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        _RULES_STAMP = digest.hexdigest()
    return _RULES_STAMP


def _cache_key(raw: bytes, display: str, codes: Sequence[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    digest.update(_rules_stamp().encode())
    digest.update(",".join(sorted(codes)).encode())
    digest.update(display.encode("utf-8", "surrogatepass"))
    digest.update(b"\0")
    digest.update(raw)
    return digest.hexdigest()


def _cache_get(cache_dir: str, key: str) -> FileResult | None:
    import json

    try:
        with open(os.path.join(cache_dir, key[:2], key + ".json"), encoding="utf-8") as fh:
            data = json.load(fh)
        return FileResult(data["path"], [Finding.from_json(f) for f in data["findings"]], data["fingerprints"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_put(cache_dir: str, key: str, result: FileResult) -> None:
    import json

    folder = os.path.join(cache_dir, key[:2])
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{key}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(
                {"path": result.path, "findings": [f.to_json() for f in result.findings], "fingerprints": result.fingerprints},
                fh,
            )
        os.replace(tmp, os.path.join(folder, key + ".json"))
    except OSError:
        pass  # a read-only or full cache folder only costs speed

