"""What README.md, CONTRIBUTING.md and docs/results.md name in backticks exists: repository
paths, `make` targets, `module.NAME` / `module:Class` and `file.py::name` references.

docs/benchmarks.md is left out on purpose: it records past commands as they were run (scratch
folders under /tmp, scripts since removed).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md", "docs/results.md")
# The walk-throughs' made-up examples: files a contributor would create.
EXAMPLES = {"deploy/calibrate.py", "tests/test_calibrate.py", "deploy.calibrate"}

CODE = r"(?:distill|deploy|tasks|flows)"
PATH = re.compile(
    r"(?<![\w./<-])((?:distill|deploy|tasks|flows|tests|bench|configs|docs|edge)/[\w./-]*\w)"
)
MODULE_NAME = re.compile(rf"\b({CODE}\.\w+)[.:](\w+)")
FILE_NAME = re.compile(rf"\b((?:{CODE}|tests)/[\w/]+\.py)::(\w+)")
MAKE = re.compile(r"\bmake ([a-z][\w-]*)")


def backticked(doc: str) -> list[tuple[int, str]]:
    text = (REPO / doc).read_text()
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(r"`([^`\n]+)`", text)
    ]


@functools.cache
def top_level_names(path: Path) -> frozenset[str]:
    """Functions, classes and assigned names anywhere in the module (methods included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def problems(doc: str) -> list[str]:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    found = []
    for line, token in backticked(doc):
        where = f"{doc}:{line} `{token}`"
        found += [f"{where}: no make target '{t}'" for t in MAKE.findall(token) if t not in targets]
        for path in PATH.findall(token):
            path = path.split("::")[0]
            if path not in EXAMPLES and not (REPO / path).exists():
                found.append(f"{where}: no such path {path}")
        pairs = [(REPO / f"{m.replace('.', '/')}.py", n, m) for m, n in MODULE_NAME.findall(token)]
        pairs += [(REPO / f, n, f) for f, n in FILE_NAME.findall(token)]
        for file, name, shown in pairs:
            if shown in EXAMPLES:
                continue
            if not file.is_file():
                found.append(f"{where}: no module {shown}")
            elif name not in top_level_names(file):
                found.append(f"{where}: {shown} defines no {name}")
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_target_and_name_a_doc_mentions_exists(doc):
    assert problems(doc) == []


def test_the_checker_notices_a_missing_path_target_and_name(tmp_path, monkeypatch):
    (tmp_path / "Makefile").write_text("run:\n\techo\n")
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "losses.py").write_text("LOSS_TERMS = ()\n")
    (tmp_path / "DOC.md").write_text(
        "`make run` `make nothing` `distill/losses.py` `distill/gone.py`\n"
        "`distill.losses.LOSS_TERMS` `distill.losses.MISSING` `distill/losses.py::LOSS_TERMS`\n"
    )
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert problems("DOC.md") == [
        "DOC.md:1 `make nothing`: no make target 'nothing'",
        "DOC.md:1 `distill/gone.py`: no such path distill/gone.py",
        "DOC.md:2 `distill.losses.MISSING`: distill.losses defines no MISSING",
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_to_a_section_finds_its_heading(doc):
    source = REPO / doc
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", source.read_text()):
        linked = (source.parent / target) if target else source
        if not linked.is_file() or anchor not in anchors(linked):
            broken.append(f"{target}#{anchor}")
    assert broken == []


def test_a_heading_slug_is_githubs():
    assert slug("Damaged files, concurrent runs, killed runs, disk use") == (
        "damaged-files-concurrent-runs-killed-runs-disk-use"
    )
    assert slug("Fault suite (`tests/faults/`)") == "fault-suite-testsfaults"
