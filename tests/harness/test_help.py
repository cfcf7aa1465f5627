"""`harness test --help` and `harness compare-reads --help`: one section per option group."""

from __future__ import annotations

from click.testing import CliRunner

from harness.cli import cli
from harness.compare_cmd import EXCLUDED_PARAMS
from harness.options import OPTIONS
from harness.test_cmd import HELP_SECTIONS


def help_sections(command: str) -> dict[str, list[str]]:
    """The long flags under each section heading of `harness COMMAND --help`, in order."""
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    sections: dict[str, list[str]] = {}
    current = None
    for line in result.output.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = []
        elif current is not None and line.startswith("  -"):  # not a wrapped help line
            flags = [w.rstrip(",") for w in line.split() if w.startswith("--")]
            sections[current].append(flags[0])
    return sections


def test_the_test_help_has_a_section_per_group_in_order_each_option_under_its_own() -> None:
    sections = help_sections("test")
    titles = [title for _, title in HELP_SECTIONS]
    assert list(sections) == [*titles, "Other options"]
    for group, title in HELP_SECTIONS:
        assert sections[title] == [row.flag for row in OPTIONS if row.group == group], title
    assert sections["Other options"] == ["--help"]
    assert sections["Run options"][:2] == ["--backend", "--target"]
    assert "--image" in sections["Docker backend options"]
    assert "--node-cmd" in sections["http target options (--target http)"]


def test_compare_reads_help_puts_its_own_options_first_then_the_same_sections() -> None:
    sections = help_sections("compare-reads")
    assert next(iter(sections)) == "Options" and sections["Options"] == ["--modes", "--json"]
    for group, title in HELP_SECTIONS:
        shown = [r.flag for r in OPTIONS if r.group == group and r.dest not in EXCLUDED_PARAMS]
        assert sections[title] == shown, title
