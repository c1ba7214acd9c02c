"""Documentation tests: the README is a newcomer's page and no link is dead.

The README must stay short (at most 400 lines), open with its title and
then the three commands a new user runs (set-up, tests, quick start), the
first two of which are what ``.ci/run`` runs; its layout must name every
module of the package. Every relative link in ``README.md`` and
``docs/*.md``, anchors included, must point to something that exists.
"""

import collections
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MAX_README_LINES = 400
DOCS = [README] + sorted(
    os.path.join(REPO, "docs", name)
    for name in os.listdir(os.path.join(REPO, "docs"))
    if name.endswith(".md")
)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped
    (``_`` and ``-`` kept), spaces as ``-``.

    Example
    -------
    >>> github_anchor("The CPU study: `hparams/ablation_synthetic.yaml`")
    'the-cpu-study-hparamsablation_syntheticyaml'
    """
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown):
    """The anchors of a Markdown text's headings, outside code blocks; a
    repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    seen = collections.Counter()
    found = set()
    for match in re.finditer(r"^#+ (.+)$", FENCE.sub("", markdown), re.M):
        anchor = github_anchor(match.group(1))
        found.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")
        seen[anchor] += 1
    return found


def dead_links(path):
    """The relative links of a Markdown file (outside code blocks) whose
    file, folder or anchor does not exist, as ``'target: why'``."""
    text = read(path)
    dead = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(
            os.path.join(os.path.dirname(path), file_part)
        )
        if file_part and not os.path.exists(linked):
            dead.append(f"{target}: no such file or folder")
        elif anchor:
            doc = linked if file_part else path
            if not doc.endswith(".md"):
                dead.append(f"{target}: an anchor into a non-Markdown file")
            elif anchor not in anchors(read(doc)):
                dead.append(f"{target}: no heading with this anchor")
    return dead


def first_code_block(text):
    match = FENCE.search(text)
    return match.group(0).split("\n")[1:-1]


def test_readme_is_short():
    lines = read(README).split("\n")
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, over {MAX_README_LINES}: move "
        "measurements and narratives to docs/ and link them"
    )


def test_readme_opens_with_its_title_then_the_three_commands():
    text = read(README)
    lines = text.split("\n")
    assert lines[0] == "# HarmoniFuse for SpeechBrain"
    # Only a blank line between the title and the commands.
    assert lines[1] == "" and lines[2] == "```bash"
    assert first_code_block(text) == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]"',
        ".venv/bin/python -m pytest -q",
        ".venv/bin/python train.py hparams/harmonifuse_tiny.yaml",
    ]


def test_ci_runs_the_readme_first_two_commands():
    """``.ci/run`` does what a new user does: its last two commands are the
    README's first two, character for character."""
    ci = [
        line
        for line in read(os.path.join(REPO, ".ci", "run")).split("\n")
        if line.strip() and not line.startswith("#")
    ]
    assert ci[-2:] == first_code_block(read(README))[:2]


def test_readme_layout_names_every_module():
    """The layout lists every module and subpackage of ``harmonifuse_sb``
    and names none that does not exist."""
    text = read(README)
    layout = text[text.index("## Layout") :]
    layout = first_code_block(layout)
    package = os.path.join(REPO, "harmonifuse_sb")
    modules = {
        name
        for name in os.listdir(package)
        if (name.endswith(".py") and name != "__init__.py")
        or os.path.exists(os.path.join(package, name, "__init__.py"))
    }
    listed = set()
    for line in layout:
        match = re.match(r"^  ([\w]+(\.py|/))\s", line)
        if match:
            listed.add(match.group(1).rstrip("/"))
    assert modules - listed == set(), "modules missing from README's layout"
    assert listed - modules == set(), "README's layout names no such module"


@pytest.mark.parametrize("doc", DOCS, ids=os.path.basename)
def test_relative_links_point_to_files_that_exist(doc):
    assert dead_links(doc) == []


def test_dead_link_check_finds_dead_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [ok](#page) "
        "[web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [self](#none)\n"
        "```\n[in code](ignored.md)\n```\n"
    )
    assert dead_links(str(page)) == [
        "missing.md: no such file or folder",
        "other.md#nowhere: no heading with this anchor",
        "#none: no heading with this anchor",
    ]
