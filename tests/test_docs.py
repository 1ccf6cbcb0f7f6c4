"""The notes in docs/ ship with the repository: no citation points outside it, every cited section exists."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_DIRS = {".venv", ".git", ".tools", "runs", "demo_data", "__pycache__", ".pytest_cache",
             ".ipynb_checkpoints", "build", "ovis.egg-info"}
SUFFIXES = {".py", ".md", ".ipynb", ".yaml", ".sh", ".toml"}
# written in pieces so that this file does not match itself
STALE = ("METHODS " + "\u00a7", "../shared/" + "METHODS", "../shared/" + "ARCHITECTURE")
CITATION = re.compile(r"(?<![\w-])docs/([\w.-]+\.md)(?:#([\w-]+))?")  # docs/cpl.md#22-teacher, anywhere
DOCS_LINK = re.compile(r"\]\(([\w.-]+\.md)?#([\w-]+)\)")  # inside docs/: [text](cpl.md#22-teacher), [text](#0-sources)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def text_files() -> list[Path]:
    """The repository's text files that may cite the notes (virtualenv, runs and generated folders skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix in SUFFIXES or f == "Makefile"]
    return sorted(found)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces → '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Anchors of every heading of a Markdown file (code blocks skipped; repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        a = anchor(heading)
        out.add(a if a not in seen else f"{a}-{seen[a]}")
        seen[a] = seen.get(a, 0) + 1
    return out


def broken(name: str, frag: str | None) -> str | None:
    """Why docs/<name>#<frag> does not resolve, or None when it does."""
    target = DOCS / name
    if not target.is_file():
        return f"no file docs/{name}"
    if frag and frag not in anchors(target):
        return f"no heading with anchor #{frag} in docs/{name}"
    return None


def lines_with(text: str, needle: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines(), 1) if needle in line]


def test_no_citation_of_documents_outside_the_repository() -> None:
    stale = []
    for path in text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        stale += [f"{path.relative_to(ROOT)}:{n}: {s!r}" for s in STALE for n in lines_with(text, s)]
    assert not stale, "cite docs/<file>.md#<section> instead:\n" + "\n".join(stale)


def test_every_docs_citation_resolves() -> None:
    bad, cited = [], 0
    for path in text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        links = [(m.group(1), m.group(2), m.group(0)) for m in CITATION.finditer(text)]
        if path.parent == DOCS:
            links += [(m.group(1) or path.name, m.group(2), m.group(0)) for m in DOCS_LINK.finditer(text)]
        for name, frag, raw in links:
            cited += 1
            why = broken(name, frag)
            if why:
                line = lines_with(text, raw)[0]
                bad.append(f"{path.relative_to(ROOT)}:{line}: {raw} ({why})")
    assert cited > 0, "no docs/ citation found: the scan is broken"
    assert not bad, "\n".join(bad)


def test_every_docs_file_is_linked_from_the_index() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and f"]({p.name}" not in index]
    assert not unlinked, f"docs/README.md does not link {unlinked}"
