"""The README's table of finding codes is generated from the rule registry and must match it."""
from pathlib import Path

from peftdoctor.rules.registry import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_rule_table_is_current() -> None:
    text = README.read_text()
    table = text.split("<!-- rules:start -->\n", 1)[1].split("<!-- rules:end -->", 1)[0]
    assert table.strip() == markdown_table().strip(), "run: peftdoctor rules --format markdown"


def test_readme_commands_are_the_ones_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in README.read_text() and "scripts/test.sh" in ci


def test_architecture_section_lists_every_module() -> None:
    """The README's architecture table names every module of the package (a folder row covers a package)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture"):]
    missing = []
    for path in sorted((root / "peftdoctor").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if path.name == "__main__.py" or (path.name == "__init__.py" and path.parent.name in ("model", "ops", "io", "peft",
                                                                                              "cli", "peftdoctor")):
            continue
        folder = relative.rsplit("/", 1)[0] + "/"
        short = relative.split("/", 1)[1]  # "io/hub_cache.py", as the table writes a second module of a row
        if f"`{relative}`" not in section and f"`{folder}`" not in section and f"`{short}`" not in section \
                and f"`{path.name}`" not in section:
            missing.append(relative)
    assert not missing, f"modules the README's architecture section does not list: {missing}"
