"""The documentation: every relative link in README.md and docs/*.md resolves; the README stays short.

A link resolves when its file (or folder) exists and, for `page.md#anchor` or `#anchor`, the target page has a
heading whose GitHub slug is that anchor (lowercase, punctuation but - and _ dropped, spaces to -, -1, -2, ...
for repeated headings). Links and headings inside fenced code blocks and inline code do not count.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HTML_TARGET = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.I)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def documentation_pages() -> list[Path]:
    """README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text: "Verification: `cleannet-verify`" -> "verification-cleannet-verify"."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).lower()  # inline HTML tags
    text = re.sub(r"[^\w\- ]", "", text)  # punctuation (backticks, colons, brackets, ...); \w keeps _
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown page, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and image of a page, outside code."""
    found = []
    for number, line in _prose_lines(text):
        line = _INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in _INLINE_LINK.finditer(line)]
        targets += [m.group(1) for m in _HTML_TARGET.finditer(line)]
        definition = _REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        found += [(number, target) for target in targets]
    return found


def dead_links(page: Path) -> list[str]:
    """One message per relative link of `page` whose file or heading does not exist."""
    problems = []
    for number, target in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        target_path = (page.parent / path_part).resolve() if path_part else page
        shown = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        where = f"{shown}:{number}: link {target!r}"
        if not target_path.exists():
            problems.append(f"{where}: {target_path} does not exist")
            continue
        if anchor:
            if target_path.suffix != ".md" or not target_path.is_file():
                problems.append(f"{where}: an anchor into {target_path.name}, which is not a markdown page")
            elif anchor not in anchors(target_path.read_text(encoding="utf-8")):
                problems.append(f"{where}: {target_path.name} has no heading with the anchor #{anchor}")
    return problems


def test_every_relative_link_in_the_documentation_resolves():
    pages = documentation_pages()
    assert len(pages) > 1 and (ROOT / "docs" / "README.md") in pages
    problems = [problem for page in pages for problem in dead_links(page)]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_listed_in_the_docs_index_and_linked_from_the_readme():
    index_targets = {target.partition("#")[0] for _, target in links((ROOT / "docs" / "README.md").read_text())}
    readme_targets = {target.partition("#")[0] for _, target in links((ROOT / "README.md").read_text())}
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name == "README.md":
            continue
        assert page.name in index_targets, f"docs/README.md does not list {page.name}"
        assert f"docs/{page.name}" in readme_targets, f"README.md does not link docs/{page.name}"


def test_the_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_link_checker_finds_dead_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Verification: `cleannet-verify`\n\n## Notes\n\n## Notes\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title: the (first) page\n\n"
        "Good: [a](other.md), [b](other.md#verification-cleannet-verify), [c](#title-the-first-page),\n"
        "[d](other.md#notes-1), ![e](image.png), [f](https://example.com/missing.md), [g](./).\n"
        "Dead: [h](missing.md), [i](other.md#no-such-heading), [j](#nowhere), ![k](gone.png).\n"
        "`[not a link](inline-code.md)`\n\n"
        "```\n[not a link](fenced.md)\n# not a heading\n```\n\n"
        "[ref]: also-missing.md\n"
    )
    problems = dead_links(page)
    assert len(problems) == 5, "\n".join(problems)
    for target in ("missing.md", "other.md#no-such-heading", "#nowhere", "gone.png", "also-missing.md"):
        assert sum(f"link {target!r}" in problem for problem in problems) == 1, target
    assert "no heading with the anchor #no-such-heading" in "\n".join(problems)
    assert "not-a-heading" not in anchors(page.read_text())


def test_github_slugs():
    assert github_slug("Verification: `cleannet-verify`") == "verification-cleannet-verify"
    assert github_slug("Real photos (CIFAR-10N)") == "real-photos-cifar-10n"
    assert github_slug("Resuming, DONE records, the workdir lock") == "resuming-done-records-the-workdir-lock"
    assert github_slug("data_format and [the docs](x.md)") == "data_format-and-the-docs"
