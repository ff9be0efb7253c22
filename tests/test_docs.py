"""The documents users read: the README stays a short front page, every relative link in
it and in docs/ leads to a file that exists, and nothing names internal work items."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_the_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail to docs/"


def test_relative_links_lead_to_files():
    broken = []
    for doc in DOCS:
        for target, _ in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_user_facing_text_names_no_work_items():
    pattern = re.compile(r"\b(issue|item) \d+\b|\bseeds? 00\d", re.I)
    readable = [*DOCS, *sorted((ROOT / "src" / "vaelab").rglob("*.py")),
                *sorted((ROOT / "src" / "vaelab" / "_web").glob("*"))]
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in readable if p.is_file()
            for m in pattern.finditer(p.read_text(errors="replace"))]
    assert hits == []
