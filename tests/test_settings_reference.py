"""The generated settings reference (docs/hooks.py) and the settings registry agree: every setting
appears once, and its default, accepted values and help read back to the
registry's."""

import html
import importlib.util
import re

import pytest

from conftest import ROOT
from fedcomp.run.config import SETTINGS, validate_value

ROW = re.compile(r"^\| `([^`]+)` \|")


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(hooks) -> dict[str, list[str]]:
    """The reference's rows by key: [default, accepts, meaning], as the Markdown cells read."""
    found: dict[str, list[str]] = {}
    order = []
    for line in hooks.settings_reference().splitlines():
        match = ROW.match(line)
        if match:
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            assert len(cells) == 4, f"a row that is not 4 cells: {line}"
            assert match.group(1) not in found, f"{match.group(1)} listed twice"
            order.append(match.group(1))
            found[match.group(1)] = [cell.replace("\\|", "|") for cell in cells[1:]]
    assert sorted(order) == sorted(SETTINGS)  # every setting, none other
    return found


def test_every_setting_is_listed_once(rows):
    assert len(rows) == len(SETTINGS) > 100


def test_each_default_reads_back_as_the_registry_default(rows):
    for key, (default, _, _) in rows.items():
        typed = "" if default == "(empty)" else default.strip("`")
        assert validate_value(key, typed) == SETTINGS[key].default, key


def test_each_meaning_is_the_registry_help(rows):
    for key, (_, _, meaning) in rows.items():
        assert html.unescape(meaning) == SETTINGS[key].help, key


def test_accepted_values_name_every_choice_or_the_requirement(rows):
    for key, (_, accepts, _) in rows.items():
        setting = SETTINGS[key]
        if setting.choices is not None:
            choices = setting.choices() if callable(setting.choices) else setting.choices
            for choice in choices:
                assert (f"`{choice}`" if choice else "(empty)") in accepts, (key, choice)
            for prefix in setting.prefixes:
                assert f"`{prefix}...`" in accepts, (key, prefix)
        elif setting.check is not None:
            assert html.unescape(accepts) == setting.check.requirement, key


def test_settings_are_grouped_under_their_prefix(hooks):
    page = hooks.settings_reference()
    sections = re.findall(r"^## (\S+)$", page, flags=re.M)
    assert sections == list(dict.fromkeys(hooks.group_of(key) for key in SETTINGS))
    assert "up" in sections and "down" in sections and hooks.EVERYDAY in sections
