"""Every reference to ``docs/`` resolves in a clone: cited files and sections exist, links work.

Code, tests, scripts, infra files and the README cite the facts they rely on as
``docs/<file>.md §N``. Over the tracked files, these tests check that each cited file exists
under ``docs/`` and has a heading numbered N; that no section sign stands without a file to
look it up in (RFC sections aside); that no file names the notes without the ``docs/`` prefix
or points outside the repository at the research folder they were written from; and that
every relative Markdown link, anchor included, and every source key used in ``docs/``
resolves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Folders a plain walk skips when the checkout is not a git work tree (an unpacked sdist).
SKIPPED_DIRS = {".git", ".venv", ".venv-iac", "__pycache__", ".mypy_cache", ".ruff_cache"}
SKIPPED_DIRS |= {".pytest_cache", ".hypothesis", "node_modules"}

SECTION = r"§\s?(\d+(?:\.\d+)*)"
# docs/<name>.md, then any number of section numbers: "§N.M, §N".
CITATION = re.compile(
    r"(?<![\w.-])docs/(?P<name>[\w.-]+\.md)(?P<sections>(?:\s*(?:,|and)?\s*" + SECTION + r")*)"
)
# Inside docs/, a sibling may be named without the prefix.
SIBLING_CITATION = re.compile(
    r"(?<![\w/.-])(?P<name>[\w-]+\.md)(?P<sections>(?:\s*(?:,|and)?\s*" + SECTION + r")*)"
)
# A Markdown link whose text is a section: "[§N](<path>.md#<anchor>)".
LINKED_SECTION = re.compile(r"\[" + SECTION + r"\]\((?P<target>[^)#\s]+\.md)(?:#[^)\s]*)?\)")
SECTION_SIGN = re.compile(SECTION)
RFC_BEFORE = re.compile(r"RFC\s?\d+[\s,]*$")
# The research notes by their bare names, not preceded by a path (docs/ or ../../docs/).
BARE_NOTE = re.compile(r"(?<![\w/.-])(?:ims-api|webhooks|performance)\.md")
OUTSIDE = re.compile(r"\.\./shared\b|shared[/]reference|/work[/]shared")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
NUMBERED = re.compile(r"^(?P<number>\d+(?:\.\d+)*)\.?\s")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!\\)\[[^\]\n]*\]\((?P<target>[^)\s]+)\)")
SOURCE_KEY_USE = re.compile(r"(?<![\\\w])\[(?P<key>[a-z][a-z0-9-]*)\](?![(:\[])")
SOURCE_KEY_DEFINITION = re.compile(r"^\[(?P<key>[^\]]+)\]:\s+\S+", re.MULTILINE)
# Confidence tags of docs/webhooks.md: plain text in brackets, not links.
TAGS = {"doc", "src", "2nd", "unconfirmed"}


# --- the files --------------------------------------------------------------------------------


@cache
def tracked_files() -> tuple[Path, ...]:
    """The repository's text files: ``git ls-files``, or a walk outside a git checkout."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        listed = subprocess.run(
            [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode("utf-8")
        candidates = [ROOT / name for name in listed.split("\0") if name]
    else:
        candidates = [
            path for path in ROOT.rglob("*") if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts)
        ]
    return tuple(path for path in sorted(candidates) if path.is_file() and _is_text(path))


def _is_text(path: Path) -> bool:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@cache
def text_of(path: Path) -> str:
    return path.read_text("utf-8")


def in_docs(path: Path) -> bool:
    return path.parent == DOCS


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def in_url(text: str, offset: int) -> bool:
    """Whether the match at ``offset`` is part of a URL (a docs folder of another project)."""
    start = max(text.rfind(stop, 0, offset) for stop in " \t\n(<[\"'`") + 1
    return "://" in text[start:offset]


def markdown_prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code, lengths kept (offsets stay valid)."""
    lines = []
    fenced = False
    for line in text.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            lines.append(" " * len(line))
        elif fenced:
            lines.append(" " * len(line))
        else:
            lines.append(INLINE_CODE.sub(lambda m: " " * len(m.group()), line))
    return "\n".join(lines)


# --- headings and anchors ---------------------------------------------------------------------


def headings(path: Path) -> list[str]:
    """The heading texts of a Markdown file, outside code blocks."""
    found = []
    fenced = False
    for line in text_of(path).split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = HEADING.match(line)
        if match and not fenced:
            found.append(match["text"])
    return found


@cache
def section_numbers(path: Path) -> frozenset[str]:
    """The numbers headings start with: ``## 4. Title`` and ``### 4.2 Title`` give 4 and 4.2."""
    numbers = set()
    for text in headings(path):
        match = NUMBERED.match(text)
        if match:
            numbers.add(match["number"])
    return frozenset(numbers)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: code marks and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor of a Markdown file, with GitHub's -1, -2 … for repeated headings."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in headings(path):
        base = slug(heading)
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return frozenset(found)


# --- what the files cite ----------------------------------------------------------------------


def citations() -> list[tuple[str, Path, str | None]]:
    """(place, cited file, section or None) for every citation of a docs file."""
    found: list[tuple[str, Path, str | None]] = []
    for path in tracked_files():
        text = text_of(path)
        patterns = [CITATION, SIBLING_CITATION] if in_docs(path) else [CITATION]
        for pattern in patterns:
            for match in pattern.finditer(text):
                if in_url(text, match.start()):
                    continue
                cited = DOCS / match["name"]
                sections = SECTION_SIGN.findall(match["sections"]) or [None]
                for number in sections:
                    found.append((where(path, text, match.start()), cited, number))
        for match in LINKED_SECTION.finditer(text):
            cited = (path.parent / match["target"]).resolve()
            found.append((where(path, text, match.start()), cited, match[1]))
    return found


def test_every_cited_docs_file_and_section_exists() -> None:
    cited = citations()
    # The code cites these notes in about twenty places: an empty list means the pattern broke.
    assert len([c for c in cited if c[2] is not None]) >= 15
    problems = []
    for place, path, number in cited:
        if not path.is_file():
            problems.append(f"{place}: {path.relative_to(ROOT)} does not exist")
        elif number is not None and number not in section_numbers(path):
            problems.append(f"{place}: {path.relative_to(ROOT)} has no section {number}")
    assert not problems, "\n".join(problems)


def test_no_section_sign_without_a_file_to_look_it_up_in() -> None:
    problems = []
    for path in tracked_files():
        text = text_of(path)
        covered: set[int] = set()
        patterns = [CITATION, SIBLING_CITATION, LINKED_SECTION]
        for pattern in patterns:
            for match in pattern.finditer(text):
                covered.update(range(match.start(), match.end()))
        for match in SECTION_SIGN.finditer(text):
            if match.start() in covered:
                continue
            line_start = text.rfind("\n", 0, match.start()) + 1
            if RFC_BEFORE.search(text[line_start : match.start()]):
                continue
            if in_docs(path) and match[1] in section_numbers(path):
                continue  # a section of the same document
            place = where(path, text, match.start())
            problems.append(f"{place}: {match.group()} names no docs/ file (or no such section)")
    assert not problems, "\n".join(problems)


def test_the_notes_are_named_with_the_docs_prefix_and_nothing_points_outside() -> None:
    problems = []
    for path in tracked_files():
        text = text_of(path)
        for match in OUTSIDE.finditer(text):
            problems.append(f"{where(path, text, match.start())}: points outside the repository")
        if in_docs(path):
            continue  # siblings are named relative to docs/
        for match in BARE_NOTE.finditer(text):
            if not in_url(text, match.start()):
                problems.append(f"{where(path, text, match.start())}: cite docs/{match.group()}")
    assert not problems, "\n".join(problems)


def markdown_files() -> list[Path]:
    return [path for path in tracked_files() if path.suffix == ".md"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_markdown_link_resolves(path: Path) -> None:
    text = markdown_prose(text_of(path))
    problems = []
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: …
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{where(path, text, match.start())}: {file_part} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where(path, text, match.start())}: no #{anchor} in {file_part}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_source_key_in_docs_is_defined(path: Path) -> None:
    text = text_of(path)
    defined = {match["key"] for match in SOURCE_KEY_DEFINITION.finditer(text)}
    used = {match["key"] for match in SOURCE_KEY_USE.finditer(markdown_prose(text))}
    assert not (used - defined - TAGS), f"undefined source keys: {sorted(used - defined - TAGS)}"
    assert not (defined - used), f"defined but never used: {sorted(defined - used)}"


def test_the_docs_index_lists_every_document() -> None:
    index = text_of(DOCS / "README.md")
    for path in sorted(DOCS.glob("*.md")):
        if path.name != "README.md":
            assert f"]({path.name})" in index, f"docs/README.md does not list {path.name}"
