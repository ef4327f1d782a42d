"""Run settings declared beside what they configure: each key's type, default, check and help, once.

A subsystem declares its keys on the fields of its settings dataclass with :func:`setting`:
the field's default *is* the setting's default, so the two cannot drift apart. A key with
no dataclass field (a switch such as ``edge.fantastic4``, a value read directly) is a
:class:`Setting` in a module-level table beside the code that reads it. `fedcomp.run.config`
collects every declaration into the registry that checks a run's configuration, and
:func:`build` makes a dataclass from the checked values as they are (no re-casting)::

    @dataclass(frozen=True)
    class TrainSettings:
        epochs: int = setting("local_epochs", 1, "local epochs per round", check=POSITIVE)

    build(TrainSettings, config)   # TrainSettings(epochs=config["local_epochs"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

Value = bool | int | float | str
T = TypeVar("T")

_KEY = "fedcomp.setting"  # where a field keeps its declaration (dataclasses field metadata)


@dataclass(frozen=True)
class Check:
    """A test a setting's value must pass, and how to say what it requires (``"> 0"``)."""

    test: Callable[[Any], bool]
    requirement: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))


POSITIVE = Check(lambda x: x > 0, "> 0")
NON_NEGATIVE = Check(lambda x: x >= 0, ">= 0")
UNIT_INTERVAL = Check(lambda x: 0 < x <= 1, "in (0, 1]")
OPEN_UNIT_INTERVAL = Check(lambda x: 0 < x < 1, "in (0, 1)")
PROBABILITY = Check(lambda x: 0 <= x <= 1, "in [0, 1]")


def between(low: int, high: int) -> Check:
    """Integers from ``low`` to ``high`` inclusive."""
    return Check(lambda x: low <= x <= high, f"in {low}..{high}")


@dataclass(frozen=True)
class Setting:
    """One run setting: its default (whose type is the setting's type), a line of help, and what it accepts.

    ``choices``: the accepted values, or a function listing them (for registries filled at
    run time). ``prefixes``: values starting with one of these are open-ended (paths, plugins).
    """

    default: Value
    help: str
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None
    check: Check | None = None
    prefixes: tuple[str, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)


def setting(key: str, default: Value, help: str, *, choices: tuple[str, ...] | Callable[[], list[str]] | None = None,
            check: Check | None = None, parse: Callable[[Any], Any] | None = None, optional: bool = False) -> Any:
    """A dataclass field that is run setting ``key``, with ``default`` as both the field's and the setting's default.

    Parameters
    ----------
    key: the setting's dotted name (relative to a prefix for dataclasses declared once per
        prefix, as the compression spec is for ``up.`` and ``down.``).
    default, help, choices, check: see :class:`Setting`.
    parse: turns the setting's value into the field's (a comma-separated string into a
        tuple); the field's default is ``parse(default)``.
    optional: the field defaults to None ("not given"); ``default`` is the run setting's
        value that stands for it, which the dataclass's own reader maps back (the
        compression spec's ``qp``, ``step`` and ``bits``).

    Returns
    -------
    A ``dataclasses.field`` carrying the declaration.
    """
    declaration = (key, Setting(default, help, choices, check), parse, optional)
    value = None if optional else parse(default) if parse else default
    if isinstance(value, (list, dict, set)):
        raise TypeError(f"setting {key!r}: a field default must be immutable")
    return dataclasses.field(default=value, metadata={_KEY: declaration})


def _declarations(cls: type) -> list[tuple[str, str, Setting, Callable[[Any], Any] | None, bool]]:
    return [(f.name, *f.metadata[_KEY]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def declared(cls: type, prefix: str = "") -> dict[str, Setting]:
    """The settings the fields of dataclass ``cls`` declare, by key (``prefix`` + the field's key)."""
    return {prefix + key: declaration for _, key, declaration, _, _ in _declarations(cls)}


def build(cls: type[T], config: Mapping[str, Any], prefix: str = "", **given: Any) -> T:
    """``cls`` from checked settings: each declared field takes its key's value, ``given`` the other fields.

    Parameters
    ----------
    cls: a dataclass whose fields are declared with :func:`setting`.
    config: resolved settings (`fedcomp.run.config.resolve`): every value already has its type.
    prefix: prepended to each field's key (``"up."``).
    given: values of fields that are not settings of their own (the run's seed).

    Returns
    -------
    The dataclass instance.
    """
    values = {name: parse(config[prefix + key]) if parse else config[prefix + key]
              for name, key, _, parse, _ in _declarations(cls)}
    return cls(**values, **given)


def collect(*tables: Mapping[str, Setting]) -> dict[str, Setting]:
    """One registry from several declaration tables; a key declared twice is a programming error."""
    registry: dict[str, Setting] = {}
    for table in tables:
        twice = sorted(set(registry) & set(table))
        if twice:
            raise RuntimeError(f"setting(s) declared twice: {', '.join(twice)}")
        registry.update(table)
    return registry
