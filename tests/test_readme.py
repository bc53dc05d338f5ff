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
