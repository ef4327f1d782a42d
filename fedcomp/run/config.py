"""Run settings: the registry of every dotted key, collected from where each is declared.

Each subsystem declares its keys (type, default, check, help) beside what they configure,
with `fedcomp.settings`: on the fields of its settings dataclass (`TrainSettings`,
`QATSettings`, `CompressionSpec` for ``up.*``/``down.*``, `UpdateSettings`, `FaultPlan`,
`EdgeSettings`, `DataOptions`, `DivergenceRules`) or in a module's ``SETTINGS`` table (what a run is made of,
the device, the trackers, and below the apps' own keys). `registry()` collects them all.

A run's configuration is resolved in layers, later ones winning: the defaults, a preset
(`fedcomp.run.presets`), a TOML file (nested tables flatten to dotted keys), and
``--set key=value`` overrides. The resolved dict is exactly what travels to the ServerApp
and ClientApps as Flower's ``run_config``, so every party reads the same settings.
"""

from __future__ import annotations

import difflib
import tomllib
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Mapping

from fedcomp.errors import ConfigError
from fedcomp.compress.quant.staleness import valid_policy
from fedcomp.settings import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, Check, Setting, Value, collect, declared

def _known_presets(text: str) -> bool:
    from fedcomp.run.presets import PRESETS, split_names

    return all(name in PRESETS for name in split_names(text))


#: The keys the ServerApp, the ClientApp and the launcher read themselves (no core dataclass holds them).
APP_SETTINGS: dict[str, Setting] = {
    # the federation: rounds and sampling, the server's rules
    "rounds": Setting(20, "federated rounds", check=POSITIVE),
    "fraction": Setting(1.0, "fraction of clients sampled for training each round", check=UNIT_INTERVAL),
    "server.min_clients": Setting(2, "minimum clients sampled per round", check=POSITIVE),
    "server.max_update_norm": Setting(0.0, "L2 bound on a client's update (0: none)", check=NON_NEGATIVE),
    "server.norm_action": Setting("clip", "what to do with an update above the bound", choices=("clip", "refuse")),
    "server.round_timeout": Setting(3600.0, "seconds the server waits for a round's replies; a client that has "
                                    "not replied by then counts as failed (timed out)", check=POSITIVE),
    "sync.stale_residual": Setting("keep", "what a client does with its error-feedback residual after missed "
                                   "rounds: keep, decay:B (times B per missed round) or reset:K (dropped after K)",
                                   check=Check(valid_policy, "keep, decay:B with B in (0, 1] or reset:K")),
    "server.discovery": Setting("all", "how the server learns each node's partition: all (one setup query to every "
                                "node before round 1, then clients are sampled by partition id, the same under any "
                                "engine) or sampled (only sampled nodes are ever contacted: nodes are sampled by node "
                                "id and name their partition in their replies; the same clients only where node ids "
                                "repeat, e.g. the loopback grid)", choices=("all", "sampled")),
    "server.min_results": Setting(1, "fewest usable training replies a round needs to update the global model "
                                  "(below it the model is unchanged and the run goes on)", check=POSITIVE),
    "eval.federated": Setting(False, "also evaluate the global model on the clients' local data each round"),
    "client.state": Setting("auto", "where clients keep state between rounds: memory, disk (<run folder>/"
                            "client-state, survives a crash) or auto (disk when the run has a folder)",
                            choices=("auto", "memory", "disk")),
    # the simulation engine
    "sim.client_cpus": Setting(1, "CPUs reserved per simulated client (Ray actor)", check=POSITIVE),
    "sim.threads": Setting(1, "torch threads per client process", check=POSITIVE),
    "sim.client_gpus": Setting(0.0, "GPU share reserved per simulated client (Ray actor); 0.25 = 4 clients per GPU",
                               check=NON_NEGATIVE),
    "sim.ray_address": Setting("", "existing Ray cluster to run on (HEAD:6379 or auto); empty starts a local Ray"),
    # the run folder
    "output.dir": Setting("", "run folder; empty means runs/<timestamp>-<preset>"),
    "output.preset": Setting("default", "name of the preset the run started from (for the run folder name)"),
    "output.dump_updates": Setting(False, "write every client update to updates/r<round>.npz in the run folder, "
                                          "one file per round as the run goes"),
    "output.save_model": Setting(False, "write the final global model to model.npz in the run folder"),
    "output.checkpoint": Setting(True, "after every round, write checkpoint.npz to the run folder (atomically)"),
    "output.resume": Setting(False, "continue from the run folder's checkpoint (set by fedcomp run --resume)"),
    # flwr run: presets applied beneath the run config's other (non-default) keys
    "preset": Setting("", "presets applied in order by the apps under `flwr run`, comma-separated (fedcomp run "
                      "expands them itself)", check=Check(_known_presets, "preset names, comma-separated "
                                                          "(see `fedcomp presets`)")),
}

@cache
def registry() -> dict[str, Setting]:
    """Every setting, by key, collected from the modules that declare them.

    Collected on first use, so that importing this module (the CLI's help, the list of
    presets) does not import what the settings configure (torch, Flower, the datasets).
    """
    from fedcomp.compress.compression import DIRECTIONS, direction_settings
    from fedcomp.data.bundle import DataOptions
    from fedcomp.data.view import DataView
    from fedcomp.exchange.faults import FaultPlan
    from fedcomp.exchange.updates import UpdateSettings
    from fedcomp.fantastic4 import edge
    from fedcomp.local import qat
    from fedcomp.local.training import TrainSettings
    from fedcomp.records import trackers
    from fedcomp.records.divergence import DivergenceRules
    from fedcomp.run import device, experiment

    return collect(experiment.SETTINGS, declared(DataOptions), declared(DataView), declared(TrainSettings),
                   APP_SETTINGS, declared(DivergenceRules), device.SETTINGS, declared(UpdateSettings),
                   declared(FaultPlan), qat.SETTINGS,
                   declared(qat.QATSettings), edge.SETTINGS, declared(edge.EdgeSettings), trackers.SETTINGS,
                   *(direction_settings(direction) for direction in DIRECTIONS))


def __getattr__(name: str) -> Any:
    """``SETTINGS``: the registry, collected on first use."""
    if name == "SETTINGS":
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _coerce(key: str, value: Any) -> Value:
    """Bring ``value`` (from TOML, a CLI string or Flower's run_config) to the setting's type."""
    setting = registry()[key]
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
    settings = registry()
    if key not in settings:
        close = difflib.get_close_matches(key, settings, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown setting '{key}'.{hint} Valid settings: {', '.join(settings)}")
    setting = settings[key]
    value = _coerce(key, value)
    if setting.choices is not None and not (setting.prefixes and str(value).startswith(setting.prefixes)):
        choices = list(setting.choices() if callable(setting.choices) else setting.choices)
        if value not in choices:
            valid = ", ".join(choices + [f"{p}..." for p in setting.prefixes])
            raise ConfigError(f"setting '{key}' must be one of {valid}; got {value!r}")
    if setting.check is not None and not setting.check(value):
        raise ConfigError(f"setting '{key}' must be {setting.check.requirement}; got {value!r}")
    return value


def defaults() -> dict[str, Value]:
    """Every setting at its default."""
    return {k: s.default for k, s in registry().items()}


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


def _expand_schemes(layer: Mapping[str, Any]) -> dict[str, Any]:
    """A layer naming ``<direction>.scheme`` first sets that scheme's keys, then its own explicit keys."""
    from fedcomp.compress.compression import DIRECTIONS, scheme_settings

    out: dict[str, Any] = {}
    for direction in DIRECTIONS:
        if f"{direction}.scheme" in layer:
            out.update(scheme_settings(direction, str(layer[f"{direction}.scheme"]).strip()))
    out.update(layer)
    return out


def _check_whole(config: Mapping[str, Any]) -> None:
    """Checks across settings: each direction's spec, and what FSFL and partial updates need."""
    from fedcomp.compress.compression import direction_spec

    up, down = direction_spec(config, "up"), direction_spec(config, "down")
    if config["fsfl.mode"] != "off" and up.lossless_dense:
        raise ConfigError("fsfl.mode needs compressed upstream updates (set up.scheme, e.g. topk-uniform-ans)")
    if not down.lossless_dense and up.lossless_dense:
        raise ConfigError("compressed downstream (down.*) needs compressed upstream updates too (set up.scheme)")
    groups = [g.strip() for g in str(config["partial.groups"]).split(",") if g.strip()]
    if groups and up.lossless_dense:
        raise ConfigError("partial.groups needs compressed upstream updates (set up.scheme)")
    if "scales" in groups and config["fsfl.mode"] == "off":
        raise ConfigError("partial group 'scales' needs fsfl.mode = joint or compensate")
    if config["qat.method"] != "none" and (groups or config["fsfl.mode"] == "joint" or not config["fsfl.fold"]):
        raise ConfigError("qat.method trains the whole model without filter scales: it does not combine with "
                          "partial.groups, fsfl.mode = joint or fsfl.fold = false")


def resolve(*layers: Mapping[str, Any]) -> dict[str, Value]:
    """Defaults overlaid with each layer in turn, every value validated."""
    config = defaults()
    for layer in layers:
        for key, value in _expand_schemes(layer).items():
            config[key] = validate_value(key, value)
    _check_whole(config)
    return config


def from_run_config(run_config: Mapping[str, Any]) -> dict[str, Value]:
    """The settings a ServerApp/ClientApp sees, from Flower's ``context.run_config``; resolved once per run config.

    ``fedcomp run`` passes the fully resolved settings. Under ``flwr run`` a ``preset`` key
    applies those presets first (``fmnist,fsfl-bidir``: composed in order); the run config's keys
    that differ from their defaults go on top (so, there, a key set back to its default does not
    override a preset). A ClientApp calls this for every message: the same run config is resolved only once
    per process, and each call gets its own copy.
    """
    return dict(_resolved(tuple(sorted(run_config.items()))))


@lru_cache(maxsize=8)
def _resolved(items: tuple[tuple[str, Any], ...]) -> dict[str, Value]:
    run_config = dict(items)
    name = str(run_config.get("preset", ""))
    if not name:
        return resolve(run_config)
    from fedcomp.run.presets import compose, split_names

    changed = {k: v for k, v in run_config.items()
               if k != "preset" and (k not in registry() or validate_value(k, v) != registry()[k].default)}
    return resolve(compose(split_names(name)), changed)
