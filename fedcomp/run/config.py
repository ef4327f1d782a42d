"""Run settings: one flat table of dotted keys, each with a default and a check.

A run's configuration is resolved in layers, later ones winning: the defaults below, a
preset (`fedcomp.run.presets`), a TOML file (nested tables flatten to dotted keys), and
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


def _open_unit_interval(x: Any) -> bool:
    return 0 < x < 1


def _device_name(x: Any) -> bool:
    from fedcomp.run.device import valid_device_name

    return valid_device_name(x)


def _dataset_names() -> list[str]:
    from fedcomp.data import dataset_names

    return [name for name in dataset_names() if ":" not in name]  # the open forms come from `prefixes`


def _model_names() -> list[str]:
    from fedcomp.models import model_names

    return model_names()


SETTINGS: dict[str, Setting] = {
    # everyday keys
    "dataset": Setting("digits", "dataset: a built-in name, folder:PATH, clients:PATH, csv:PATH, parquet:PATH, "
                       "hf:PATH or python:module:function",
                       choices=_dataset_names, prefixes=("folder:", "python:", "clients:", "csv:", "parquet:", "hf:")),
    "model": Setting("cnn", "model: a registered name or python:module:function",
                     choices=_model_names, prefixes=("python:",)),
    "num_clients": Setting(10, "number of simulated clients (SuperNodes)", check=_positive, requirement="> 0"),
    "rounds": Setting(20, "federated rounds", check=_positive, requirement="> 0"),
    "fraction": Setting(1.0, "fraction of clients sampled for training each round",
                        check=_unit_interval, requirement="in (0, 1]"),
    "partition": Setting("iid", "how the training set is split among clients",
                         choices=("iid", "dirichlet", "pathological", "natural")),
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
    # your own data: tables and one folder per client (README "Bring your own data")
    "data.label": Setting("label", "label column of a csv:/parquet:/hf: table or of each client's table"),
    "data.features": Setting("", "feature columns, comma-separated; empty means every column but the label "
                                 "and data.partition_by"),
    "data.partition_by": Setting("", "column whose values are the clients of partition=natural "
                                     "(a writer, a hospital, a device id)"),
    "data.test_fraction": Setting(0.2, "share of a table, or of each client folder without test/, held out "
                                       "for central evaluation", check=_open_unit_interval, requirement="in (0, 1)"),
    "data.classes": Setting("", "class names in label order, comma-separated; empty means the sorted classes "
                                "found in the data (needed when a node reads its own data-path)"),
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
    # scale-out: devices and Ray (issue 10)
    "sim.device": Setting("auto", "where training and evaluation run: auto (CUDA when present), cpu, cuda, cuda:N",
                          check=_device_name, requirement="auto, cpu, cuda or cuda:N"),
    "sim.client_gpus": Setting(0.0, "GPU share reserved per simulated client (Ray actor); 0.25 = 4 clients per GPU",
                               check=_non_negative, requirement=">= 0"),
    "sim.ray_address": Setting("", "existing Ray cluster to run on (HEAD:6379 or auto); empty starts a local Ray"),
    # output
    "output.dir": Setting("", "run folder; empty means runs/<timestamp>-<preset>"),
    "output.preset": Setting("default", "name of the preset the run started from (for the run folder name)"),
    "output.dump_updates": Setting(False, "write every client update to updates/r<round>.npz in the run folder, "
                                          "one file per round as the run goes"),
    # flwr run: presets applied beneath the run config's other (non-default) keys
    "preset": Setting("", "presets applied in order by the apps under `flwr run`, comma-separated (fedcomp run "
                      "expands them itself)", check=lambda x: _known_presets(x), requirement="preset names, "
                      "comma-separated (see `fedcomp presets`)"),
    # compressed FL (DESIGN 3, 4.3-4.6)
    "server.lr": Setting(1.0, "server learning rate: the global step is server.lr x the aggregated update",
                         check=_positive, requirement="> 0"),
    "sync.history": Setting(20, "downstream payloads the server keeps to replay to clients that missed rounds",
                            check=_non_negative, requirement=">= 0"),
    "fsfl.mode": Setting("off", "filter-wise scaling: off, joint (scales train with the weights) or compensate "
                         "(scales train after sparsification, on the weights the server will reconstruct)",
                         choices=("off", "joint", "compensate")),
    "fsfl.scale_lr": Setting(0.05, "learning rate of the filter scales (SGD, no momentum)",
                             check=_positive, requirement="> 0"),
    "fsfl.scale_epochs": Setting(1, "local epochs of the scales-only pass (compensate mode)",
                                 check=_positive, requirement="> 0"),
    "fsfl.fold": Setting(True, "fold the scales into the weights after every round (false: keep them)"),
    "fsfl.scale_qp": Setting(-40, "NNC qp of the dense scale updates (-40: step 2**-10)"),
    "partial.groups": Setting("", "parameter groups clients train and send: scales, bias, bn, head, last:N or "
                              "name globs, comma-separated (empty: the whole model)"),
    # reliability: failure injection (fedcomp/exchange/faults.py) and bounds on client updates
    "faults.client_failure_rate": Setting(0.0, "probability that a client fails in a round (injected)",
                                          check=lambda x: 0 <= x <= 1, requirement="in [0, 1]"),
    "faults.corrupt_payload_rate": Setting(0.0, "probability that a client's reply payload is corrupted "
                                           "(injected)", check=lambda x: 0 <= x <= 1, requirement="in [0, 1]"),
    "faults.slow_client_rate": Setting(0.0, "probability that a client is slow in a round (injected)",
                                       check=lambda x: 0 <= x <= 1, requirement="in [0, 1]"),
    "faults.slow_seconds": Setting(1.0, "how long an injected slow client waits", check=_non_negative,
                                   requirement=">= 0"),
    "server.max_update_norm": Setting(0.0, "L2 bound on a client's update (0: none)", check=_non_negative,
                                      requirement=">= 0"),
    "server.norm_action": Setting("clip", "what to do with an update above the bound", choices=("clip", "refuse")),
    # reliability: client timeouts and the minimum-results rule (issue 11)
    "server.round_timeout": Setting(3600.0, "seconds the server waits for a round's replies; a client that has "
                                    "not replied by then counts as failed (timed out)",
                                    check=_positive, requirement="> 0"),
    "server.min_results": Setting(1, "fewest usable training replies a round needs to update the global model "
                                  "(below it the model is unchanged and the run goes on)",
                                  check=_positive, requirement="> 0"),
    # quantization-aware local training (issue 8, fedcomp.local.qat): clients train with per-step quantization
    "qat.method": Setting("none", "quantization-aware local training: none, ecq, ecqx or ec2t",
                          choices=("none", "ecq", "ecqx", "ec2t")),
    "qat.bits": Setting(4, "QAT grid bits (ecq, ecqx)", check=lambda x: 2 <= x <= 8, requirement="in 2..8"),
    "qat.gamma": Setting(0.05, "QAT entropy-constraint strength", check=_non_negative, requirement=">= 0"),
    "qat.p": Setting(0.1, "QAT ECQx sparsity tolerance below ECQ", check=lambda x: 0 <= x <= 1,
                     requirement="in [0, 1]"),
    "qat.relevance_batch": Setting(64, "QAT ECQx: local examples for the LRP relevances",
                                   check=_positive, requirement="> 0"),
    # FantastIC4 edge emulation (issue 9; fedcomp/fantastic4)
    "output.save_model": Setting(False, "write the final global model to model.npz in the run folder"),
    "edge.fantastic4": Setting(False, "evaluate the global model on an emulated FantastIC4 edge device"),
    "edge.every": Setting(1, "edge evaluation every N rounds (and after the last)", check=_positive,
                          requirement="> 0"),
    "edge.target": Setting("fpga", "the calibrated implementation to cost on", choices=("fpga", "asic")),
    "edge.act_bits": Setting(8, "bit width of the integer activations", check=lambda x: 2 <= x <= 16,
                             requirement="in 2..16"),
    "edge.gamma": Setting(0.1, "ECQ entropy constraint of the 4-bit weights (0: nearest grid level)",
                          check=_non_negative, requirement=">= 0"),
    "edge.head": Setting(False, "run only the fully-connected layers after the model's last other layer on the "
                                "device (the rest in float on the host)"),
    "edge.format": Setting("cheapest", "compact format of every layer, or the cheapest per layer",
                           choices=("cheapest", "dense", "csr", "cer", "cser")),
    "edge.objective": Setting("energy", "what 'cheapest' minimises", choices=("energy", "cycles", "bytes")),
    "edge.qat_epochs": Setting(0, "quantization-aware fine-tune epochs on the calibration examples",
                               check=_non_negative, requirement=">= 0"),
    "edge.calibration": Setting(256, "training examples the edge client holds (activation scales, fine-tune)",
                                check=_positive, requirement="> 0"),
    # experiment trackers (fedcomp.records.trackers; need the `track` extra)
    "track.tensorboard": Setting(False, "write TensorBoard event files to <run folder>/tensorboard"),
    "track.mlflow": Setting(False, "log config, per-round metrics and summary to MLflow (track.mlflow_uri)"),
    "track.mlflow_uri": Setting("", "MLflow tracking URI; empty means a local file store <run folder>/mlruns"),
    "track.experiment": Setting("fedcomp", "MLflow experiment name"),
    # checkpoint and resume (issue 11; fedcomp/records/checkpoint.py, fedcomp/exchange/client_state.py)
    "output.checkpoint": Setting(True, "after every round, write checkpoint.npz to the run folder (atomically)"),
    "output.resume": Setting(False, "continue from the run folder's checkpoint (set by fedcomp run --resume)"),
    "client.state": Setting("auto", "where clients keep state between rounds: memory, disk (<run folder>/"
                            "client-state, survives a crash) or auto (disk when the run has a folder)",
                            choices=("auto", "memory", "disk")),
}

DIRECTIONS = ("up", "down")


def _known_presets(text: str) -> bool:
    from fedcomp.run.presets import PRESETS, split_names

    return all(name in PRESETS for name in split_names(text))


def _compression_settings() -> dict[str, Setting]:
    """``up.<key>`` and ``down.<key>`` for every CompressionSpec key, and ``<direction>.scheme``."""
    from fedcomp.compress.compression import SCHEMES, CompressionSpec

    out: dict[str, Setting] = {}
    for direction in DIRECTIONS:
        out[f"{direction}.scheme"] = Setting(
            "", f"{direction}stream compression scheme; sets every {direction}.* key of its layer",
            choices=lambda: ["", *SCHEMES])
        for key, default in CompressionSpec.setting_defaults().items():
            if key != "seed":  # senders seed from the run's seed and their own id
                out[f"{direction}.{key}"] = Setting(default, f"{direction}stream compression: {key}")
    return out


SETTINGS.update(_compression_settings())


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


def scheme_settings(direction: str, scheme: str) -> dict[str, Value]:
    """Every ``<direction>.*`` key as scheme ``scheme`` sets it (the others at their defaults)."""
    from fedcomp.compress.compression import SCHEMES, CompressionSpec

    if scheme and scheme not in SCHEMES:
        raise ConfigError(f"setting '{direction}.scheme' must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    table = {**CompressionSpec.setting_defaults(), **(SCHEMES[scheme] if scheme else {})}
    table.pop("seed", None)
    return {f"{direction}.{k}": v for k, v in table.items()} | {f"{direction}.scheme": scheme}


def _expand_schemes(layer: Mapping[str, Any]) -> dict[str, Any]:
    """A layer naming ``<direction>.scheme`` first sets that scheme's keys, then its own explicit keys."""
    out: dict[str, Any] = {}
    for direction in DIRECTIONS:
        if f"{direction}.scheme" in layer:
            out.update(scheme_settings(direction, str(layer[f"{direction}.scheme"]).strip()))
    out.update(layer)
    return out


def direction_spec(config: Mapping[str, Any], direction: str):
    """The `CompressionSpec` of one direction (``up`` or ``down``) of a resolved config."""
    from fedcomp.compress.compression import CompressionSpec

    prefix = f"{direction}."
    flat = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
    try:
        return CompressionSpec.from_settings(flat)
    except ConfigError as err:
        raise ConfigError(f"{direction}stream compression: {err}") from None


def _check_whole(config: Mapping[str, Any]) -> None:
    """Checks across settings: each direction's spec, and what FSFL and partial updates need."""
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
    """The settings a ServerApp/ClientApp sees, from Flower's ``context.run_config``.

    ``fedcomp run`` passes the fully resolved settings. Under ``flwr run`` a ``preset`` key
    applies those presets first (``fmnist,fsfl-bidir``: composed in order); the run config's keys
    that differ from their defaults go on top (so, there, a key set back to its default does not
    override a preset).
    """
    name = str(run_config.get("preset", ""))
    if not name:
        return resolve(dict(run_config))
    from fedcomp.run.presets import compose, split_names

    changed = {k: v for k, v in run_config.items()
               if k != "preset" and (k not in SETTINGS or validate_value(k, v) != SETTINGS[k].default)}
    return resolve(compose(split_names(name)), changed)
