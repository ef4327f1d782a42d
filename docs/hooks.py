"""MkDocs hooks: pages generated from the project itself, so that they cannot drift from it.

- ``reference/settings.md`` is written from the settings registry (`fedcomp.run.config.SETTINGS`)
  by `settings_reference`; ``tests/test_settings_reference.py`` checks the two agree.
- ``reference/cli.md`` is written from the ``fedcomp`` command's own options by `cli_reference`.
- ``<!-- generated: presets -->`` in a page becomes the table of presets (`fedcomp.run.presets.PRESETS`).
- ``benchmarks/results/`` (the tables and plots the benchmark scripts write) is served as it is
  in the repository, under the same path.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = "reference/settings.md"
CLI_PAGE = "reference/cli.md"
RESULTS = "benchmarks/results"
RESULT_SUFFIXES = (".md", ".png", ".html")
EVERYDAY = "everyday"  # the group of the keys without a dotted prefix

INTRO = """# Settings

Every setting of a run, generated from the settings registry (`fedcomp.run.config.SETTINGS`)
when the site is built. Set them with `--set key=value`, in a TOML file (tables nest the
prefixes: `[data]` then `alpha = 0.3`), or through a preset; `fedcomp run` resolves them in
that order: defaults, preset, TOML file, `--set`. An unknown key or a value a setting does not
accept stops the command with one line that lists the valid choices.
"""


def _cell(text: str) -> str:
    """Code-span text safe inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _text(text: str) -> str:
    """Prose safe inside one Markdown table cell (``<run folder>`` is not an HTML tag)."""
    return html.escape(_cell(text), quote=False)


def _code(value: Any) -> str:
    """A value as the code span a user would type (``true``, ``0.05``, ``"iid"`` as ``iid``, ``""`` as empty)."""
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return "(empty)"
    return f"`{_cell(str(value))}`"


def accepted(setting: Any) -> str:
    """What ``setting`` accepts: its choices (open-ended prefixes included) or its requirement."""
    if setting.choices is not None:
        choices = list(setting.choices() if callable(setting.choices) else setting.choices)
        return ", ".join([_code(c) for c in choices] + [f"`{p}...`" for p in setting.prefixes])
    if setting.check is not None:
        return _text(setting.check.requirement)
    return setting.kind.__name__


def group_of(key: str) -> str:
    """The section a key is listed under: its prefix before the first dot."""
    return key.split(".", 1)[0] if "." in key else EVERYDAY


def settings_reference() -> str:
    """The settings reference page: one table per prefix, one row per setting, in registry order."""
    from fedcomp.run.config import SETTINGS

    groups: dict[str, list[str]] = {}
    for key in SETTINGS:
        groups.setdefault(group_of(key), []).append(key)
    lines = [INTRO]
    for group, keys in groups.items():
        lines += [f"## {group}", "", "| key | default | accepts | meaning |", "|---|---|---|---|"]
        for key in keys:
            setting = SETTINGS[key]
            lines.append(f"| `{key}` | {_code(setting.default)} | {accepted(setting)} | {_text(setting.help)} |")
        lines.append("")
    return "\n".join(lines)


def cli_reference() -> str:
    """The command-line reference page: every ``fedcomp`` command with its arguments and options."""
    import click
    import typer.main

    from fedcomp.cli import app

    group = typer.main.get_command(app)
    lines = ["# Command line", "", "Every `fedcomp` command, generated from the command's own definition when the "
             "site is built. `fedcomp COMMAND --help` prints the same.", ""]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        lines += [f"## fedcomp {name}", "", html.escape((command.help or "").strip(), quote=False), "",
                  "| argument or option | default | meaning |", "|---|---|---|"]
        for param in command.params:
            if isinstance(param, click.Argument):
                names = f"`{param.human_readable_name}`" + (" ..." if param.nargs == -1 else "")
            else:
                names = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
            default = "" if param.default in (None, False, (), []) or param.is_flag else _code(param.default)
            lines.append(f"| {names} | {default} | {_text(getattr(param, 'help', None) or '')} |")
        lines.append("")
    return "\n".join(lines)


def presets_table() -> str:
    """Every preset with its kind and one-line description, in the order ``fedcomp presets`` lists them."""
    from fedcomp.run.presets import FLAGSHIP, PRESETS, kind

    flagship = " (the flagship: what a bare `fedcomp run` runs)"
    rows = [f"| `{name}` | {kind(name)} | {_text(description)}{flagship if name == FLAGSHIP else ''} |"
            for name, (description, _) in PRESETS.items()]
    return "\n".join(["| preset | kind | what it is |", "|---|---|---|", *rows])


GENERATED = {"<!-- generated: presets -->": presets_table}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each generated-content marker in a page with what it stands for."""
    for marker, generate in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """Add the generated settings and command-line pages and the benchmark results to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, SETTINGS_PAGE, content=settings_reference()))
    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    for path in sorted((ROOT / RESULTS).iterdir()):
        if path.suffix in RESULT_SUFFIXES:
            files.append(File.generated(config, f"{RESULTS}/{path.name}", abs_src_path=str(path)))
    return files
