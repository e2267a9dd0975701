"""The documentation against the repository: links, commands, example paths, figures' sources, LICENSE.

Fast and without SST: only files are read and ``stagelearn --help`` is run once.
"""

from __future__ import annotations

import importlib
import re
import sys

import pytest

from conftest import REPO, run_cmd

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
EXAMPLE_READMES = sorted((REPO / "examples").glob("*/README.md"))
# pages whose named paths are checked (the user-facing pages; the method pages name package-relative files)
PATH_CHECKED = [README, *EXAMPLE_READMES] + [REPO / "docs" / n for n in
                                             ("concepts.md", "configuration.md", "outputs.md", "benchmarks.md",
                                              "install.md")]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
TOP_DIRS = "examples|benchmarks|docs|xml_configs|containers|tests|staging|analytics|sim_mocks"
PATH = re.compile(rf"(?<![\w/.-])((?:{TOP_DIRS})/[\w./-]*[\w/])")


def _slug(heading):
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    body = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", body, re.M)}


def _code(text):
    """Inline code and fenced blocks of a Markdown text, joined."""
    return "\n".join(m.group(0) for m in CODE.finditer(text))


@pytest.mark.parametrize("page", [README, *DOCS, *EXAMPLE_READMES], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for m in LINK.finditer(page.read_text()):
        target = m.group(1) or m.group(2)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading '#{anchor}' in {dest.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_every_docs_page_is_reachable_from_the_readme():
    linked, todo = set(), [README]
    while todo:
        page = todo.pop()
        for m in LINK.finditer(page.read_text()):
            target = (m.group(1) or m.group(2)).partition("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            dest = (page.parent / target).resolve()
            if dest.suffix == ".md" and dest.exists() and dest not in linked:
                linked.add(dest)
                todo.append(dest)
    unreachable = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unreachable, f"docs pages not reachable by links from README.md: {unreachable}"


def test_make_targets_named_in_readme_exist():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", _code(README.read_text())))
    assert named, "README names no make target"
    assert named <= targets, f"make targets named in README.md but not in the Makefile: {sorted(named - targets)}"


def test_stagelearn_subcommands_named_in_docs_exist():
    proc = run_cmd([sys.executable, "-m", "stagelearn", "--help"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    groups = [set(g.split(",")) for g in re.findall(r"\{([\w,-]+)\}", proc.stdout)]
    commands = next((g for g in groups if "run" in g), None)
    assert commands, proc.stdout
    pages = [README, REPO / "docs" / "configuration.md", *EXAMPLE_READMES]
    for page in pages:
        named = set(re.findall(r"\bstagelearn ([a-z][\w-]*)", _code(page.read_text())))
        assert named <= commands, f"{page.name} names stagelearn subcommands that do not exist: {sorted(named - commands)}"


@pytest.mark.parametrize("page", PATH_CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_named_exist(page):
    missing = []
    for m in PATH.finditer(page.read_text()):
        rel = m.group(1).rstrip(".")
        if any(c in rel for c in "*<"):
            continue
        if not (REPO / rel).exists() and not (page.parent / rel).exists():
            missing.append(rel)
    assert not missing, f"{page.name} names paths that do not exist: {sorted(set(missing))}"


def test_own_simulation_example_is_complete():
    example = REPO / "examples" / "own_simulation"
    for name in ("my_sim.py", "my_run.yaml", "README.md"):
        assert (example / name).is_file(), name
    from stagelearn.staging.config import load_config  # the YAML the README tells users to start staging with
    cfg = load_config(example / "my_run.yaml")
    assert cfg.simulation.ranks == 2 and cfg.staging.ranks == 1
    assert list(cfg.staging.tile_shape) == [8, 8]
    source = (example / "my_sim.py").read_text()
    assert "from stagelearn.staging import Producer" in source
    # the line the README shows is the line the script prints
    assert "my_sim wrote {written} steps on {size} ranks; last encoder version {version}" in source
    assert "my_sim wrote 30 steps on 2 ranks; last encoder version 3" in README.read_text()


def test_demo_output_lines_come_from_the_report():
    """The summary lines the README shows are the ones `stagelearn run` prints (staging/report.py)."""
    source = (REPO / "staging" / "report.py").read_text()
    block = re.search(r"```\n(steps written.*?)```", README.read_text(), re.S)
    assert block, "README has no demo output block"
    for line in block.group(1).strip().splitlines():
        phrases = [p for p in re.findall(r"[a-z][a-z ]*[a-z]", line) if len(p) >= 6]
        missing = [p for p in phrases if p not in source]
        assert phrases and not missing, f"README demo line not printed by staging/report.py: {line!r} ({missing})"


def test_figures_do_not_contradict_each_other():
    texts = {p.name: p.read_text() for p in [README, *DOCS]}
    counts = {n: set(re.findall(r"about\s+(\d+)\s+tests", t)) for n, t in texts.items()}
    minutes = {n: set(re.findall(r"about\s+(\d+)\s+minutes\s+on\s+2\s+cores\s+after\s+setup", t)) for n, t in texts.items()}
    assert counts["README.md"] and minutes["README.md"], "README.md states no test count or time"
    assert len(set().union(*counts.values())) == 1, f"test counts differ: {counts}"
    assert len(set().union(*minutes.values())) == 1, f"test times differ: {minutes}"
    # warm_ritz vs subspace iteration is 0.26x, not 0.23x (other tables may hold 0.23x of something else)
    stale = [n for n, t in texts.items()
             if re.search(r"(warm_ritz|subspace)[^\n|]{0,120}0\.23x|0\.23x[^\n|]{0,120}(warm_ritz|subspace)", t)]
    assert not stale, f"stale figure 0.23x in {stale}"


def test_license_matches_pyproject():
    license_file = REPO / "LICENSE"
    assert license_file.is_file()
    text = license_file.read_text()
    pyproject = (REPO / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    declared = re.search(r'^license\s*=\s*\{\s*text\s*=\s*"([^"]+)"\s*\}', pyproject, re.M)
    assert declared and declared.group(1) == "BSD-3-Clause", "pyproject.toml's license is not BSD-3-Clause"
    assert text.startswith("BSD 3-Clause License")
    assert "the stagelearn developers" in text
    assert "Neither the name of the copyright holder nor the names of its" in text


def test_api_reference_names_exist():
    """Every object and member docs/api.md documents exists (regenerate: python docs/gen_api.py)."""
    page = (REPO / "docs" / "api.md").read_text()
    objects = {}
    for dotted in re.findall(r"^## `([\w.]+)`", page, re.M):
        module, _, name = dotted.rpartition(".")
        objects[name] = getattr(importlib.import_module(module), name)
    assert {"Producer", "IncrementalPCA", "DistributedPCA", "AutoencoderLearner"} <= set(objects)
    for owner, member in re.findall(r"^### `(\w+)\.(\w+)`", page, re.M):
        assert hasattr(objects[owner], member), f"docs/api.md documents {owner}.{member}, which does not exist"
    for name in ("define_variable", "open", "write", "poll_encoder", "close"):
        assert f"### `Producer.{name}`" in page
