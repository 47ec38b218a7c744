"""docs/theory.md is the mathematical reference cited by docstrings, help texts and docs.

Checks that (a) nothing in the package, the docs or the README still cites the internal
specification (which users do not have), (b) every "docs/theory.md §N" resolves to a numbered
heading of docs/theory.md, and (c) every [HZX-k] tag used in the package appears in it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
SRC = ROOT / "src" / "srrlab"

#: Citations of the old, internal specification.
OLD_CITATIONS = ("spec §", "spec [HZX", "shared/spec")
#: "docs/theory.md" followed by one or more section numbers: "§3", "§2, §3, §5", "§5–§6", "§6.3".
THEORY_CITATION = re.compile(r"docs/theory\.md((?:\s*(?:,|–|-|and|or)?\s*§\d+(?:\.\d+)*)+)")
SECTION_NUMBER = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
HZX_TAG = re.compile(r"\[HZX-§?\d+\]")


def _package_files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*") if p.suffix in (".py", ".toml") and p.is_file())


def _doc_files() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _lines(paths):
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield path.relative_to(ROOT), number, line


def _theory_sections() -> set[str]:
    return set(HEADING.findall(THEORY.read_text(encoding="utf-8")))


def test_theory_doc_keeps_the_eight_sections():
    sections = _theory_sections()
    assert {str(n) for n in range(1, 9)} <= sections


def test_no_citation_of_the_internal_spec():
    offending = [f"{path}:{number}: {line.strip()}"
                 for path, number, line in _lines(_package_files() + _doc_files())
                 if any(old in line.lower() for old in OLD_CITATIONS)]
    assert not offending, "cite docs/theory.md instead of the spec:\n" + "\n".join(offending)


@pytest.mark.parametrize("where", ["src", "docs"])
def test_theory_section_citations_resolve(where):
    paths = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "src").rglob("*.toml")) \
        if where == "src" else _doc_files()
    sections = _theory_sections()
    cited = 0
    unresolved = []
    for path, number, line in _lines(paths):
        for match in THEORY_CITATION.finditer(line):
            for section in SECTION_NUMBER.findall(match.group(1)):
                cited += 1
                if section not in sections:
                    unresolved.append(f"{path}:{number}: §{section} in {line.strip()}")
    assert cited, f"no docs/theory.md § citation found under {where}"
    assert not unresolved, "no such heading in docs/theory.md:\n" + "\n".join(unresolved)


def test_hzx_tags_of_the_package_appear_in_the_theory_doc():
    theory = THEORY.read_text(encoding="utf-8")
    tags = {tag for _, _, line in _lines(sorted((ROOT / "src").rglob("*.py"))) for tag in HZX_TAG.findall(line)}
    assert tags, "no [HZX-k] tag found in src/"
    missing = sorted(tag for tag in tags if tag not in theory)
    assert not missing, f"tags cited in src/ but absent from docs/theory.md: {missing}"
