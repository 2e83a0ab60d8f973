"""Code cites the design notes the repository ships (docs/design.md) by section name, never the
numbered sections of a design file outside it (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("src", "tests", "benchmarks")
CITATION = re.compile(r'docs/design\.md[^"\n]{0,4}\\?"([A-Z][A-Za-z ]+)\\?"')


def _files():
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".json") and "__pycache__" not in path.parts:
                yield path


def test_cited_sections_exist_and_no_outside_design_is_cited():
    headings = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "design.md").read_text(), re.M))
    cited, outside = set(), []
    for path in _files():
        text = path.read_text(errors="replace")
        cited.update(CITATION.findall(text))
        outside += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"DESIGN(?:\.md)? (?:section|§)\s*\d+", text)]
    assert outside == []
    assert cited and cited <= headings, sorted(cited - headings)
