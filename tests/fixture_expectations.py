"""Reading `# expect: CODE` comments out of fixtures (pylint's idea, on the offending line).

    x = preprocess_input(images)    # expect: PRE001
    # expect+1: BNS001
    base(inputs)

Notebook fixtures carry the same comments inside code cells; places are (cell, line).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

EXPECT = re.compile(r"#\s*expect(?:([+-]\d+))?:\s*([A-Z]{3}\d{3}(?:\s*,\s*[A-Z]{3}\d{3})*)")


def _lines(path: Path) -> list[tuple[int | None, int, str]]:
    if path.suffix == ".ipynb":
        data = json.loads(path.read_text(encoding="utf-8"))
        out = []
        cell_index = 0
        for cell in data["cells"]:
            if cell.get("cell_type") != "code":
                continue
            cell_index += 1
            src = cell["source"]
            text = "".join(src) if isinstance(src, list) else src
            for number, line in enumerate(text.split("\n"), start=1):
                out.append((cell_index, number, line))
        return out
    return [(None, n, line) for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1)]


def expected(path: Path) -> Counter:
    found: Counter = Counter()
    for cell, number, line in _lines(path):
        for match in EXPECT.finditer(line):
            offset = int(match.group(1) or 0)
            for code in match.group(2).split(","):
                found[(cell, number + offset, code.strip())] += 1
    return found


def actual(findings) -> Counter:
    return Counter((f.cell, f.line, f.rule) for f in findings)
