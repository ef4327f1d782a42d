"""Run settings: one flat table of dotted keys, each with a default and a check.

A run's configuration is resolved in layers, later ones winning: the defaults below, a
preset (`fedcomp.presets`), a TOML file (nested tables flatten to dotted keys), and
``--set key=value`` overrides. The resolved dict is exactly what travels to the ServerApp
and ClientApps as Flower's ``run_config``, so every party reads the same settings.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from fedcomp.errors import ConfigError

Value = bool | int | float | str


@dataclass(frozen=True)
class Setting:
    """One setting: its default, what it accepts, and a line of help."""

    default: Value
    help: str
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None
    check: Callable[[Any], bool] | None = None
    requirement: str = ""
    prefixes: tuple[str, ...] = ()  # values starting with one of these are open-ended (paths, plugins)

    @property
    def kind(self) -> type:
        return type(self.default)


def _positive(x: Any) -> bool:
    return x > 0


def _non_negative(x: Any) -> bool:
    return x >= 0


def _unit_interval(x: Any) -> bool:
    return 0 < x <= 1


def _dataset_names() -> list[str]:
    from fedcomp.data import dataset_names

    return [name for name in dataset_names() if ":" not in name]  # the open forms come from `prefixes`


def _model_names() -> list[str]:
    from fedcomp.models import model_names

    return model_names()


SETTINGS: dict[str, Setting] = {
    # everyday keys
    "dataset": Setting("digits", "dataset: a built-in name, folder:PATH or python:module:function",
                       choices=_dataset_names, prefixes=("folder:", "python:")),
    "model": Setting("cnn", "model: a registered name or python:module:function",
                     choices=_model_names, prefixes=("python:",)),
    "num_clients": Setting(10, "number of simulated clients (SuperNodes)", check=_positive, requirement="> 0"),
    "rounds": Setting(20, "federated rounds", check=_positive, requirement="> 0"),
    "fraction": Setting(1.0, "fraction of clients sampled for training each round",
                        check=_unit_interval, requirement="in (0, 1]"),
    "partition": Setting("iid", "how the training set is split among clients",
                         choices=("iid", "dirichlet", "pathological")),
    "local_epochs": Setting(1, "local epochs per round", check=_positive, requirement="> 0"),
    "batch_size": Setting(32, "local training batch size", check=_positive, requirement="> 0"),
    "lr": Setting(0.05, "local learning rate", check=_positive, requirement="> 0"),
    "seed": Setting(0, "seed for data split, partitioning, model init, sampling and training",
                    check=_non_negative, requirement=">= 0"),
    # data
    "data.dir": Setting("data", "directory holding local dataset copies (cifar10 etc.)"),
    "data.download": Setting(False, "let torchvision download a missing dataset (needs a network)"),
    "data.alpha": Setting(0.5, "Dirichlet concentration (smaller = more skewed)",
                               check=_positive, requirement="> 0"),
    "data.classes_per_client": Setting(2, "classes per client for 'pathological'",
                                            check=_positive, requirement="> 0"),
    # local training
    "train.optimizer": Setting("sgd", "local optimizer", choices=("sgd", "adam")),
    "train.momentum": Setting(0.9, "SGD momentum", check=_non_negative, requirement=">= 0"),
    "train.weight_decay": Setting(0.0, "weight decay", check=_non_negative, requirement=">= 0"),
    # server
    "server.min_clients": Setting(2, "minimum clients sampled per round", check=_positive, requirement="> 0"),
    "eval.batch_size": Setting(512, "batch size of the central evaluation", check=_positive, requirement="> 0"),
    "eval.federated": Setting(False, "also evaluate the global model on the clients' local data each round"),
    # simulation engine
    "sim.client_cpus": Setting(1, "CPUs reserved per simulated client (Ray actor)",
                               check=_positive, requirement="> 0"),
    "sim.threads": Setting(1, "torch threads per client process", check=_positive, requirement="> 0"),
    # output
    "output.dir": Setting("", "run folder; empty means runs/<timestamp>-<preset>"),
    "output.preset": Setting("default", "name of the preset the run started from (for the run folder name)"),
    "output.dump_updates": Setting(False, "write every client update to updates.npz in the run folder"),
    # experiment trackers (fedcomp.trackers; need the `track` extra)
    "track.tensorboard": Setting(False, "write TensorBoard event files to <run folder>/tensorboard"),
    "track.mlflow": Setting(False, "log config, per-round metrics and summary to MLflow (track.mlflow_uri)"),
    "track.mlflow_uri": Setting("", "MLflow tracking URI; empty means a local file store <run folder>/mlruns"),
    "track.experiment": Setting("fedcomp", "MLflow experiment name"),
}


def _coerce(key: str, value: Any) -> Value:
    """Bring ``value`` (from TOML, a CLI string or Flower's run_config) to the setting's type."""
    setting = SETTINGS[key]
    kind = setting.kind
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return lowered in ("true", "1", "yes")
            return kind(text)
        except ValueError:
            raise ConfigError(f"setting '{key}' expects {kind.__name__}, got {value!r}") from None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"setting '{key}' expects true or false, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ConfigError(f"setting '{key}' expects {kind.__name__}, got {value!r}")
    return value


def validate_value(key: str, value: Any) -> Value:
    """Check one setting, returning its value in the setting's type; raise ConfigError otherwise."""
    if key not in SETTINGS:
        close = difflib.get_close_matches(key, SETTINGS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown setting '{key}'.{hint} Valid settings: {', '.join(SETTINGS)}")
    setting = SETTINGS[key]
    value = _coerce(key, value)
    if setting.choices is not None and not (setting.prefixes and str(value).startswith(setting.prefixes)):
        choices = list(setting.choices() if callable(setting.choices) else setting.choices)
        if value not in choices:
            valid = ", ".join(choices + [f"{p}..." for p in setting.prefixes])
            raise ConfigError(f"setting '{key}' must be one of {valid}; got {value!r}")
    if setting.check is not None and not setting.check(value):
        raise ConfigError(f"setting '{key}' must be {setting.requirement}; got {value!r}")
    return value


def defaults() -> dict[str, Value]:
    """Every setting at its default."""
    return {k: s.default for k, s in SETTINGS.items()}


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables to dotted keys: ``{"data": {"dir": "x"}}`` -> ``{"data.dir": "x"}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_assignment(text: str) -> tuple[str, str]:
    """Split a ``key=value`` override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into dotted keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return flatten(tomllib.load(f))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def resolve(*layers: Mapping[str, Any]) -> dict[str, Value]:
    """Defaults overlaid with each layer in turn, every value validated."""
    config = defaults()
    for layer in layers:
        for key, value in layer.items():
            config[key] = validate_value(key, value)
    return config


def from_run_config(run_config: Mapping[str, Any]) -> dict[str, Value]:
    """The settings a ServerApp/ClientApp sees, from Flower's ``context.run_config``."""
    return resolve({k: v for k, v in run_config.items()})
