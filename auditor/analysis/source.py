"""Turning a path (or standard input) into Python source plus a map back to where it came from.

Notebooks are flattened into one module so that an import in cell 1 resolves in cell 5, while
`cell_line()` maps each line back to (code-cell index, line in cell). IPython magics and shell
escapes become `pass`-like blank lines of the same count, so line numbers stay true.
"""

from __future__ import annotations

import re
from pathlib import Path

#: files larger than this are reported, not parsed (a generated file, not a script)
MAX_SOURCE_BYTES = 10 * 1024 * 1024

_MAGIC = re.compile(r"^\s*([%!]|\?|[A-Za-z_][\w.]*\?\s*$)")
#: IPython's automagic: `pip install x` and `conda install x` run as %pip / %conda
_AUTOMAGIC = re.compile(r"^\s*(pip|conda|mamba)\s+(install|uninstall|list|show|download|freeze)\b")
#: `files = !ls` and `t = %timeit -o f()`: IPython assigns a command's output
_MAGIC_ASSIGN = re.compile(r"^(\s*[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*,?\s*=)\s*[!%]")


class SourceError(Exception):
    """The file cannot be read as source. The message is one clear line for a USE finding."""


class SourceUnit:
    """Source text plus, for notebooks, `cell_lines` (per line of `text`, 0-based index, the
    1-based (cell, line-in-cell)) and `broken_cells` ((cell, line, message) of cells that do
    not parse)."""

    __slots__ = ("path", "text", "cell_lines", "broken_cells")

    def __init__(
        self,
        path: str,
        text: str,
        cell_lines: list[tuple[int, int]] | None = None,
        broken_cells: list[tuple[int, int, str]] | None = None,
    ):
        self.path = path
        self.text = text
        self.cell_lines = cell_lines
        self.broken_cells = broken_cells or []

    @property
    def is_notebook(self) -> bool:
        return self.cell_lines is not None

    def cell_line(self, line: int) -> tuple[int | None, int]:
        if self.cell_lines is None or not (1 <= line <= len(self.cell_lines)):
            return None, line
        return self.cell_lines[line - 1]


def read_source_bytes(path: Path) -> bytes:
    """A source file's bytes, refusing files over `MAX_SOURCE_BYTES` before reading them."""
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise SourceError(f"file is {size / 1e6:.1f} MB, over the {MAX_SOURCE_BYTES // 2**20} MiB limit for source files")
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}") from None


def read_source(path: Path, display: str | None = None) -> SourceUnit:
    return source_from_bytes(read_source_bytes(path), display or str(path))


def source_from_bytes(raw: bytes, display: str) -> SourceUnit:
    if display.endswith(".ipynb"):
        return _notebook(raw, display)
    if b"\x00" in raw[:8192]:
        raise SourceError("binary file, not Python source")
    return SourceUnit(display, _decode(raw))


def _decode(raw: bytes) -> str:
    import io
    import tokenize

    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot decode source: {exc}") from None


def _notebook(raw: bytes, display: str) -> SourceUnit:
    import json

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"not a readable notebook (invalid JSON: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells", []), list):
        raise SourceError("not a notebook: no 'cells' list")
    language = ((data.get("metadata") or {}).get("kernelspec") or {}).get("language") or (
        (data.get("metadata") or {}).get("language_info") or {}
    ).get("name")
    if language and str(language).lower() not in ("python", "python3", "ipython"):
        raise SourceError(f"notebook language is {language}, not Python")

    lines: list[str] = []
    cell_lines: list[tuple[int, int]] = []
    broken: list[tuple[int, int, str]] = []
    code_index = 0
    for cell in data.get("cells", []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        code_index += 1
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else str(src)
        cell_src = _strip_magics(text.split("\n"))
        body = "\n".join(cell_src)
        try:
            compile(body, display, "exec", flags=0x400, dont_inherit=True)  # PyCF_ONLY_AST
        except SyntaxError as exc:
            broken.append((code_index, exc.lineno or 1, exc.msg or "invalid syntax"))
            cell_src = [""] * len(cell_src)
        except (ValueError, RecursionError) as exc:
            broken.append((code_index, 1, str(exc)))
            cell_src = [""] * len(cell_src)
        for number, line in enumerate(cell_src, start=1):
            lines.append(line)
            cell_lines.append((code_index, number))
    return SourceUnit(display, "\n".join(lines) + "\n", cell_lines=cell_lines, broken_cells=broken)


def _strip_magics(lines: list[str]) -> list[str]:
    """Turn IPython-only syntax into Python of the same line count, as IPython's own input
    transformers would: a cell magic (%%) blanks the whole cell, `x = !cmd` keeps the name
    bound (to None), line magics and shell escapes become `pass`, and a cell whose first
    line is indented is dedented (IPython's `leading_indent`)."""
    if lines and lines[0].lstrip().startswith("%%"):
        return [""] * len(lines)
    first = next((line for line in lines if line.strip()), "")
    indent = first[: len(first) - len(first.lstrip())]
    if indent:
        lines = [line[len(indent) :] if line.startswith(indent) else line for line in lines]
    out = []
    depth = 0  # open brackets: inside them a leading `%` is the modulo operator, not a magic
    in_string: str | None = None  # an open triple-quoted string
    continued = False  # the previous magic line ended with a backslash
    for line in lines:
        if continued:
            continued = line.rstrip().endswith("\\")
            out.append("")
            continue
        at_statement_start = depth == 0 and in_string is None
        assigned = _MAGIC_ASSIGN.match(line) if at_statement_start else None
        if assigned:
            out.append(assigned.group(1) + " None")
            continued = line.rstrip().endswith("\\")
        elif at_statement_start and (_MAGIC.match(line) or _AUTOMAGIC.match(line)):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + "pass" if indent else "")
            continued = line.rstrip().endswith("\\")
        else:
            out.append(line)
            depth, in_string = _scan_brackets(line, depth, in_string)
    return out


def _scan_brackets(line: str, depth: int, in_string: str | None) -> tuple[int, str | None]:
    """Bracket depth and open triple-quoted string after one line: enough to tell a
    statement's start from a continuation line, without tokenizing the whole cell."""
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if line.startswith(in_string, i):
                i += len(in_string)
                in_string = None
                continue
            i += 1
            continue
        if ch == "#":
            break
        if ch in "\"'":
            quote = line[i : i + 3] if line[i : i + 3] in ('"""', "'''") else ch
            in_string = quote
            i += len(quote)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        i += 1
    if in_string is not None and len(in_string) == 1:
        in_string = None  # a one-quote string cannot span lines
    return depth, in_string
