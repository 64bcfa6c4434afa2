"""Everything README.md and docs/*.md name exists: relative links and their #anchors, repository
paths, and the command-line flags of the project's commands (read from their argparse parsers)."""

import argparse
import importlib.util
import re
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Top-level entries a path in the text may start with; such a path must exist in the repository.
ROOTS = ("rupq/", "bench/", "scripts/", "tests/", "docs/", ".ci/")
TOP_FILES = ("pyproject.toml", "requirements.txt", "pytest.ini", "LICENSE", "CITATION.cff")
#: Flags of other programs that the pages show on their own (in an inline code span).
EXTERNAL_FLAGS = {
    "torchrun": {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port"},
    "pip": {"--no-build-isolation"},
    "pytest": {"--durations"},
}

FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w./~$-])((?:rupq|bench|scripts|tests|docs|\.ci)/[\w./-]*[\w/]|"
                       + "|".join(re.escape(name) for name in TOP_FILES) + r")(?![\w/-])")


def prose_and_code(text: str) -> tuple[str, list[str]]:
    """The page without its fenced blocks, and the blocks' lines (backslash continuations joined)."""
    lines = []
    for match in FENCE.finditer(text):
        lines += match.group(2).replace("\\\n", " ").splitlines()
    return FENCE.sub("", text), lines


# ---- headings and links ------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\W)|(?<=\W)_|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = text.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = prose_and_code(page.read_text())
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found |= set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", prose))
    return found


def links(page: Path) -> list[str]:
    prose, _ = prose_and_code(page.read_text())
    prose = INLINE.sub("", prose)
    return [target for target in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {resolved.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [REPO / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in links(page):
            path = target.partition("#")[0]
            resolved = (page.parent / path).resolve()
            if path.endswith(".md") and resolved.exists():
                todo.append(resolved)
    unreachable = [page.relative_to(REPO).as_posix() for page in PAGES if page.resolve() not in reached]
    assert not unreachable, f"docs pages no link from README.md leads to: {unreachable}"


# ---- repository paths --------------------------------------------------------------------------

def repo_paths(page: Path) -> list[str]:
    text = page.read_text()
    text = LINK.sub(lambda m: m.group(0).replace(m.group(1), ""), text)  # link targets: checked above
    text = re.sub(r"https?://\S+", "", text)
    return [path for path in REPO_PATH.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_repository_paths_exist(page):
    missing = sorted({path for path in repo_paths(page) if not (REPO / path).exists()})
    assert not missing, f"{page.relative_to(REPO)} names paths that do not exist: {missing}"


# ---- command-line flags ------------------------------------------------------------------------

class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _capture(parser, *args, **kwargs):
    raise _Parsed(parser)


@cache
def flags_of(script: str) -> frozenset[str]:
    """The option strings a project command accepts: its argparse parser's, or a shell script's `case` patterns."""
    path = REPO / script
    if path.suffix == ".sh":
        return frozenset(re.findall(r"^\s*(--[\w-]+)\)", path.read_text(), re.M)) | {"--help"}
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    saved_argv, saved = sys.argv, (argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args)
    added = [str(path.parent), str(REPO)]  # as `python SCRIPT` and `python -m` would find its imports
    sys.path[:0] = added
    try:
        sys.argv = [str(path)]
        argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_known_args = _capture
        sys.modules[spec.name] = module  # as an import would (a module may look itself up there)
        spec.loader.exec_module(module)  # a script that parses at import stops here
        module.main()
    except _Parsed as parsed:
        return frozenset(option for action in parsed.parser._actions for option in action.option_strings)
    finally:
        sys.argv = saved_argv
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved
        sys.modules.pop(spec.name, None)
        for entry in added:
            sys.path.remove(entry)
    raise AssertionError(f"{script}: main() returned without parsing arguments")


#: How a command starts → the script whose parser it uses.
COMMANDS = [
    (re.compile(r"(?:^|\s)(?:python3? -m )?rupq train(?=\s|$)"), "rupq/main.py"),
    (re.compile(r"(?:^|\s)(?:python3? -m )?rupq export(?=\s|$)"), "rupq/export.py"),
    (re.compile(r"(?:^|\s)python3? -m rupq(?= --)"), "rupq/main.py"),
    (re.compile(r"(?:^|\s)python3? -m (bench\.\w+)(?=\s|$)"), None),
    (re.compile(r"(?:^\s*|python3? |torchrun\b.*?\s)((?:rupq|bench|scripts)/[\w/]*\w\.(?:py|sh))(?=\s|$)"), None),
]


def commands(page: Path) -> list[tuple[str, str]]:
    """``(script, the command's text after it)`` for every project command in the page's code."""
    prose, block_lines = prose_and_code(page.read_text())
    found = []
    for line in block_lines + [span for _, span in INLINE.findall(prose)]:
        for part in re.split(r"&&|\|\||;|\|", line.split(" # ")[0]):
            for pattern, script in COMMANDS:
                match = pattern.search(part)
                if match:
                    if script is None:
                        script = match.group(1)
                        script = script.replace(".", "/") + ".py" if script.startswith("bench.") else script
                    found.append((script, part[match.end():]))
                    break
    return found


def project_flags() -> set[str]:
    scripts = {script for page in PAGES for script, _ in commands(page)} | {"rupq/main.py", "rupq/export.py"}
    commands_ = [script for script in scripts if (REPO / script).exists()
                 and (script.endswith(".sh") or "ArgumentParser" in (REPO / script).read_text())]
    return set().union(*(flags_of(script) for script in commands_))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_command_line_flags_exist(page):
    wrong = []
    for script, rest in commands(page):
        if not (REPO / script).exists():
            wrong.append(f"{script}: no such script")
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", rest):  # a bare path names no command
            if flag not in flags_of(script):
                wrong.append(f"{script} has no {flag} (it takes {', '.join(sorted(flags_of(script)))})")
    # a flag shown alone, as in the options tables, must belong to some project command or known tool
    prose, _ = prose_and_code(page.read_text())
    known = project_flags().union(*EXTERNAL_FLAGS.values())
    for _, span in INLINE.findall(prose):
        match = re.match(r"(--[a-zA-Z][\w-]*)", span)
        if match and match.group(1) not in known:
            wrong.append(f"`{span}`: no command takes {match.group(1)}")
    assert not wrong, f"{page.relative_to(REPO)}:\n" + "\n".join(sorted(set(wrong)))
