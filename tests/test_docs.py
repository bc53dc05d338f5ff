"""docs/ says what the code does: the generated pages equal what the code generates now, every command has
a page, every page is on the map, every relative link (and its #anchor) resolves, the architecture page lists
every module, and the version is one number everywhere it is shown."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import typer.main
from setuptools.config.pyprojecttoml import read_configuration
from typer.testing import CliRunner

import peftdoctor
from peftdoctor.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))

import generate_docs  # noqa: E402

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
# Commands that are options of another command still get a page: `check --combine`.
PAGES_BEYOND_COMMANDS = ("combine",)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation but '-' and '_' removed, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    """Relative links of `path` (outside code blocks) whose file, or #anchor in it, does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check offline
            continue
        name, _, anchor = target.partition("#")
        linked = (path.parent / name).resolve() if name else path
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    return broken


def test_generated_pages_are_current() -> None:
    stale = generate_docs.stale(generate_docs.pages())
    names = [str(p.relative_to(ROOT)) for p in stale]
    assert not stale, f"{names} differ from the code: run python scripts/generate_docs.py"


def test_a_drifted_page_is_noticed(tmp_path: Path) -> None:
    page = tmp_path / "cli.md"
    page.write_text(generate_docs.cli_page().replace("--dry-run", "--dryrun"), encoding="utf-8")
    assert generate_docs.stale({page: generate_docs.cli_page(), tmp_path / "missing.md": "x"}) == [
        page, tmp_path / "missing.md"]
    assert generate_docs.main(["--check"]) == 0


def test_findings_page_is_what_rules_prints() -> None:
    table = CliRunner().invoke(app, ["rules", "--format", "markdown"])
    assert table.exit_code == 0 and table.stdout in (DOCS / "findings.md").read_text(encoding="utf-8")


def test_cli_page_names_every_option_of_every_command() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## `peftdoctor {name}`" in text
        for param in command.params:
            assert all(f"`{opt}" in text for opt in param.opts if opt.startswith("--")), (name, param.opts)


def test_every_command_has_a_page_on_the_map() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for name in [*typer.main.get_command(app).commands, *PAGES_BEYOND_COMMANDS]:
        assert (DOCS / "commands" / f"{name}.md").is_file(), f"docs/commands/{name}.md is missing"
        assert f"(commands/{name}.md)" in index, f"docs/index.md does not link commands/{name}.md"


def test_every_page_is_on_the_map() -> None:
    linked = {(DOCS / target.partition("#")[0]).resolve()
              for target in LINK.findall((DOCS / "index.md").read_text(encoding="utf-8"))}
    unlinked = [str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if p.name != "index.md" and p not in linked]
    assert not unlinked, f"pages docs/index.md does not link: {unlinked}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert not broken_links(path), f"{path.relative_to(ROOT)}: links that resolve to nothing: {broken_links(path)}"


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A page\n\n[ok](b.md#the-b-heading) [file](c.md) [anchor](b.md#none)\n"
                                   "```\n[in code](nowhere.md)\n```\n[web](https://example.org/x.md)\n")
    (tmp_path / "b.md").write_text("## The `b` heading\n")
    assert broken_links(tmp_path / "a.md") == ["c.md", "b.md#none"]


def test_architecture_page_lists_every_module() -> None:
    """The architecture table names every module of the package (a folder row covers a package)."""
    section = (DOCS / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in sorted((ROOT / "peftdoctor").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if path.name == "__main__.py" or (path.name == "__init__.py" and path.parent.name in ("model", "ops", "io", "peft",
                                                                                              "cli", "peftdoctor")):
            continue
        folder = relative.rsplit("/", 1)[0] + "/"
        short = relative.split("/", 1)[1]  # "io/hub_cache.py", as the table writes a second module of a row
        if f"`{relative}`" not in section and f"`{folder}`" not in section and f"`{short}`" not in section \
                and f"`{path.name}`" not in section:
            missing.append(relative)
    assert not missing, f"modules docs/architecture.md does not list: {missing}"


def test_one_version_everywhere() -> None:
    """pyproject.toml declares no version of its own: setuptools reads peftdoctor/__init__.py's (statically, as
    a build does); --version and the newest CHANGELOG entry agree with it."""
    project = read_configuration(ROOT / "pyproject.toml", expand=True)["project"]
    newest = re.search(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M).group(1)
    shown = CliRunner().invoke(app, ["--version"]).stdout.strip()
    assert project["dynamic"] == ["version"] and project["version"] == peftdoctor.__version__ == newest
    assert shown == f"peftdoctor {newest}"
