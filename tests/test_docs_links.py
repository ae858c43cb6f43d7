"""Every relative link in README.md and docs/*.md resolves: the file exists and, for `path#anchor`
(or `#anchor` alone), the target has a heading with that GitHub slug. External links
(http, https, mailto, any other scheme) are skipped; backticked paths are not links."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), with an optional "title"; text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s+[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation other than '-'
    and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a file offers: heading slugs (repeats get -1, -2, ... as on GitHub) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link outside code."""
    result = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub(lambda m: "x" * len(m.group(0)), line)
        result += [(number, target) for target in INLINE_LINK.findall(line)]
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            result.append((number, definition.group(1)))
    return result


def broken_links(path: Path) -> list[str]:
    """One message per relative link of `path` that does not resolve."""
    problems = []
    for number, target in links(path):
        if not target or SCHEME.match(target):
            continue  # external: http, https, mailto, ...
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.name}:{number}: [{target}]"
        if not destination.exists():
            problems.append(f"{where}: no such file {destination}")
            continue
        if not anchor:
            continue
        if destination.is_dir() or destination.suffix.lower() != ".md":
            problems.append(f"{where}: an anchor into {destination}, which is not a markdown file")
        elif unquote(anchor).lower() not in anchors(destination):
            problems.append(f"{where}: {destination.name} has no heading with the anchor #{anchor}")
    return problems


def test_docs_exist():
    names = {path.name for path in markdown_files()}
    assert {"README.md", "serving.md", "datasets.md", "artifact.md", "precisions.md", "benchmarks.md",
            "development.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_slug_follows_github():
    assert slug("Serving: `jobbert-onnx serve`") == "serving-jobbert-onnx-serve"
    assert slug("Load test (`python -m bench.serve --data DATA`)") == "load-test-python--m-benchserve---data-data"
    assert slug("Export cost at JobBERT-v3's size") == "export-cost-at-jobbert-v3s-size"
    assert slug("GPU (`bench/gpu_check.sh`, run on a lent machine, copied here)") == (
        "gpu-benchgpu_checksh-run-on-a-lent-machine-copied-here")


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine too](other.md#a-section) [repeat](other.md#a-section-1) [here](#page)\n"
        "[web](https://example.com/missing) [mail](mailto:x@example.com) `[code](missing.md)`\n"
        "```\n[in a block](missing.md)\n```\n"
        "[gone](missing.md)\n"
        "[bad anchor](other.md#no-such-section)\n"
        "[bad local anchor](#nowhere)\n"
        "[ref]: also-missing.md\n",
        encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 4, problems
    assert "page.md:8: [missing.md]" in problems[0]
    assert "#no-such-section" in problems[1]
    assert "#nowhere" in problems[2]
    assert "also-missing.md" in problems[3]
