"""The ``fedcomp`` command: run a simulation, compare runs, list presets."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedcomp.run.config import load_toml, parse_assignment, resolve
from fedcomp.errors import ConfigError, FedcompError
from fedcomp.run.presets import FLAGSHIP, PRESETS, compose, kind, preset

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fedcomp: federated-learning simulations that measure communication.")
# soft wrap: a line longer than the terminal is left whole (rich would break it at 80 columns when stdout is a
# file or a pipe), so logs and CI output read one round per line
console = Console(soft_wrap=True)


def build_config(preset_names: list[str], config_file: Optional[Path], assignments: list[str]) -> dict:
    """Defaults < presets (composed in order) < TOML file < --set overrides, every value validated."""
    layers = [compose(preset_names)]
    if config_file is not None:
        layers.append(load_toml(config_file))
    layers.append(dict(parse_assignment(a) for a in assignments))
    return resolve(*layers)


def preflight(config: dict) -> None:
    """Load the dataset, build the model, split the data among the clients and try the compression and
    the edge device once here, so that bad data, a partial group the model lacks, a codec not installed
    or a model the edge device cannot run fails before Ray starts."""
    from fedcomp.run.experiment import check_run
    from fedcomp.fantastic4.edge import preflight as edge_preflight
    from fedcomp.records.trackers import enabled
    from fedcomp.exchange.updates import UpdateSettings

    enabled(config)  # a tracker whose package is missing fails here, not inside the simulation
    if os.getcwd() not in sys.path:  # python:module:function plugins next to the user, as in the simulation
        sys.path.insert(0, os.getcwd())
    model = check_run(config)
    UpdateSettings.from_config(config).check(model)
    edge_preflight(config, model)


# the options `run` and `deploy-local` share
PresetOption = Annotated[Optional[list[str]], typer.Option(
    "--preset", "-p", help="preset to start from (see `fedcomp presets`), repeatable: later ones override earlier "
    "ones of their kind (--preset fmnist --preset fsfl-bidir)")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file of settings")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="key=value override, repeatable")]
OutOption = Annotated[Optional[Path], typer.Option("--out", "-o", help="run folder (default runs/<time>-<preset>)")]


@app.command()
def run(
    preset_names: PresetOption = None,
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    out: OutOption = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="continue the killed run in this folder from its last completed round")] = None,
) -> None:
    """Run one simulation on Flower's Simulation Engine (Ray) and write its results.

    Without --preset it runs the flagship compression preset on the digits workload; --preset fedavg is the
    uncompressed baseline.
    """
    from fedcomp.launch.simulation import run_simulation

    if resume is not None:
        if preset_names or config_file or assignments or out:
            raise ConfigError("--resume continues a run with its own settings (its config.json): give no other "
                              "options")
        config = resume_config(resume)
        execute(config, resume, run_simulation)
        return
    execute(build_config(preset_names or [FLAGSHIP], config_file, assignments or []), out, run_simulation)


def resume_config(run_dir: Path) -> dict:
    """The settings of the run in ``run_dir``, marked to continue from its checkpoint."""
    import json

    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a fedcomp run folder: it has no config.json")
    if (run_dir / "summary.json").is_file():
        raise ConfigError(f"the run in {run_dir} has finished (it has a summary.json): nothing to resume")
    saved = json.loads(path.read_text())
    return resolve({**saved, "output.dir": str(run_dir.resolve()), "output.resume": True})


def execute(config: dict, out: Optional[Path], engine: Callable[..., dict]) -> dict:
    """Run ``config`` with ``engine`` (``run_simulation`` or ``run_deployment``), showing progress; its summary.

    The last line says how many times fewer payload bytes than float32 FedAvg the run sent.
    """
    from fedcomp.records.results import MB, default_run_dir

    preflight(config)
    run_dir = out or default_run_dir(str(config["output.preset"]))
    console.print(f"[bold]fedcomp[/] {config['dataset']} / {config['model']}, {config['num_clients']} clients, "
                  f"{config['rounds']} rounds -> {run_dir}")
    with Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("rounds", total=int(config["rounds"]))

        def on_round(row: dict) -> None:
            progress.console.print(
                f"round {row['round']:>3}  acc {row['accuracy']:.4f}  loss {row['loss']:.4f}  "
                f"up {row['bytes_up'] / MB:.3f} MB  down {row['bytes_down'] / MB:.3f} MB  "
                f"total so far {row['cum_bytes_total'] / MB:.3f} MB"
                + (f"  f4 acc {row['f4_accuracy']:.4f}" if "f4_accuracy" in row else ""))  # issue 9
            progress.update(task, completed=row["round"])

        summary = engine(config, Path(run_dir), on_round=on_round)
    console.print(f"final accuracy {summary['final_accuracy']:.4f} (best {summary['best_accuracy']:.4f}); "
                  f"{summary['bytes_total'] / MB:.3f} MB transmitted; {summary['wall_seconds']:.1f} s. "
                  f"Results in {run_dir}")
    if summary.get("warning"):  # a finished run at chance accuracy (fedcomp.records.divergence.chance_warning)
        console.print(f"warning: {summary['warning']}", style="bold yellow", markup=False)
    console.print(savings_line(summary, str(config["output.preset"])))
    return summary


def savings_line(summary: dict, preset_names: str) -> str:
    """How many times fewer payload bytes than FedAvg (float32 both ways, same rounds and clients) the run sent."""
    from fedcomp.records.results import MB

    ratio = summary["compression_ratio"]
    return (f"{preset_names}: {ratio:.{0 if ratio >= 10 else 2}f}x fewer bytes than FedAvg would have sent "
            f"({summary['bytes_total'] / MB:.3f} MB instead of {summary['fedavg_bytes_total'] / MB:.3f} MB)"
            + ("" if preset_names == FLAGSHIP else f"; the flagship is --preset {FLAGSHIP}"))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders to compare")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the table here (and a .png beside it)")]
    = None,
) -> None:
    """A markdown table of several runs' summaries and one plot of their accuracy-vs-MB curves."""
    from fedcomp.analysis.compare import compare_runs

    typer.echo(compare_runs(run_dirs, out))


# --- Deployment Engine on loopback (issue 10) ---
@app.command("deploy-local")
def deploy_local(
    preset_names: PresetOption = None,
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    out: OutOption = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="no TLS and no SuperNode authentication")] = False,
    cold: Annotated[bool, typer.Option("--cold", help="let Flower start every ClientApp process fresh instead "
                                       "of forking it from a warm launcher (slower, same results)")] = False,
) -> None:
    """Run on Flower's Deployment Engine: a SuperLink and num_clients SuperNodes on 127.0.0.1.

    TLS with certificates made for the run and SuperNode authentication (keys registered
    with the Flower CLI) are on by default. Every process started is stopped at the end.
    """
    from fedcomp.launch.deploy import deployment_mode, run_deployment
    from fedcomp.records.results import MB

    config = build_config(preset_names or ["default"], config_file, assignments or [])
    console.print(deployment_mode(tls=not insecure, warm=not cold), markup=False)
    summary = execute(config, out, partial(run_deployment, tls=not insecure, warm=not cold))
    console.print(f"payload bytes up/down {summary['bytes_up']}/{summary['bytes_down']} "
                  f"({summary['bytes_total'] / MB:.3f} MB); serialised Flower messages up/down "
                  f"{summary['message_bytes_up']}/{summary['message_bytes_down']}")


# --- quantization-aware training (issue 8) ---
@app.command()
def qat(
    preset_name: Annotated[str, typer.Option("--preset", "-p", help="preset giving dataset, model, lr, batch size")]
    = "default",
    assignments: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="key=value override, repeatable")]
    = None,
    method: Annotated[str, typer.Option(help="ecq, ecqx or ec2t")] = "ecq",
    bits: Annotated[Optional[int], typer.Option(help="grid bits (ecq, ecqx; default: qat.bits)")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="entropy-constraint strength (default: qat.gamma)")] = None,
    p: Annotated[Optional[float], typer.Option(help="ECQx: sparsity tolerance below ECQ (default: qat.p)")] = None,
    epochs: Annotated[int, typer.Option(help="quantization-aware epochs")] = 5,
    pretrain: Annotated[int, typer.Option(help="float epochs before QAT (when not starting from --init)")] = 10,
    init: Annotated[Optional[Path], typer.Option(help="state dict (.pt) to fine-tune instead of pretraining")]
    = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the quantized state dict here")] = None,
) -> None:
    """Train or fine-tune a low-bit model centrally with ECQ, ECQx or EC2T on the whole training set."""
    import dataclasses

    import torch
    from torch.utils.data import DataLoader

    from fedcomp.run.config import validate_value
    from fedcomp.run.experiment import eval_loader, run_dataset, run_model
    from fedcomp.local.qat import QATSettings, compressed_sizes, qat_train
    from fedcomp.local.training import TrainSettings, evaluate, train

    config = build_config([preset_name], None, assignments or [])
    options = {"qat.method": method, "qat.bits": bits, "qat.gamma": gamma, "qat.p": p}
    config.update({key: validate_value(key, value) for key, value in options.items() if value is not None})
    settings = QATSettings.from_config(config)
    if settings is None:
        raise ConfigError("fedcomp qat needs a method: --method ecq, ecqx or ec2t")
    model = run_model(config)
    if init is not None:
        try:
            model.load_state_dict(torch.load(init, weights_only=True))
        except (OSError, RuntimeError) as err:
            raise ConfigError(f"cannot load {init} into model {config['model']!r}: {err}") from None
    bundle = run_dataset(config)
    loader = DataLoader(bundle.train, batch_size=int(config["batch_size"]), shuffle=True,
                        generator=torch.Generator().manual_seed(int(config["seed"])))
    train_settings = TrainSettings.from_config(config)
    if init is None and pretrain > 0:
        train(model, loader, dataclasses.replace(train_settings, epochs=pretrain))
    before = evaluate(model, eval_loader(config))["accuracy"]
    result = qat_train(model, loader, dataclasses.replace(train_settings, epochs=epochs), settings)
    after = evaluate(model, eval_loader(config))["accuracy"]
    sizes = compressed_sizes(result.tensors)
    dense = sum(p.numel() for p in model.parameters()) * 4
    best = min(sizes, key=sizes.get)
    typer.echo(f"{settings.method} {settings.bits}-bit gamma {settings.gamma}: accuracy {before:.4f} (float) -> "
               f"{after:.4f}, weight sparsity "
               f"{result.metrics['weight_sparsity']:.3f}, {sizes[best]} bytes with {best} "
               f"({dense / sizes[best]:.1f}x smaller than float32)")
    if out is not None:
        torch.save(model.state_dict(), out)
        typer.echo(f"quantized state dict written to {out}")


# --- sweeps and reports (issue 12) ---------------------------------------------------------


@app.command()
def sweep(
    grid: Annotated[Optional[list[str]], typer.Option("--grid", "-g", help="key=v1,v2,... swept setting, repeatable "
                                                       "(`preset` may be swept too)")] = None,
    sweep_file: Annotated[Optional[Path], typer.Option(
        "--file", "-f", help="TOML sweep file ([set], [grid], [[runs]])")] = None,
    preset_name: Annotated[Optional[str], typer.Option("--preset", "-p", help="preset of every run")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="key=value for every run")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="sweep folder (default runs/sweep-<time>)")]
    = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="runs at a time (default: one per CPU of --cpus)")] = 0,
    cpus: Annotated[int, typer.Option("--cpus", help="CPUs the sweep may use (default: all)")] = 0,
    report: Annotated[bool, typer.Option(help="write report.html into the sweep folder at the end")] = True,
) -> None:
    """Run a grid/list of settings, several runs at a time on one SuperLink; finished runs are skipped."""
    from datetime import datetime

    from fedcomp.run.config import parse_assignment
    from fedcomp.analysis.sweep import SweepPlan, expand, load_sweep_file, merge_plans, parse_grid, run_sweep

    plan = load_sweep_file(sweep_file) if sweep_file else SweepPlan()
    if preset_name:
        plan = SweepPlan(preset_name, plan.base, plan.grid, plan.points)
    plan = merge_plans(plan, dict(parse_assignment(a) for a in assignments or []),
                       dict(parse_grid(g) for g in grid or []))
    runs = expand(plan)
    seen = set()
    for run in runs:  # each dataset/model once, before anything starts
        key = (run.config["dataset"], run.config["model"], run.config["data.dir"])
        if key not in seen:
            seen.add(key)
            preflight(run.config)
    cpus = cpus or os.cpu_count() or 1
    jobs = jobs or cpus
    sweep_dir = out or Path("runs") / f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"[bold]fedcomp sweep[/] {len(runs)} runs, {jobs} at a time on {cpus} CPUs -> {sweep_dir}")

    def on_done(entry: dict) -> None:
        if entry["status"] == "done":
            console.print(f"done    {entry['name']}  acc {entry['final_accuracy']:.4f}  "
                          f"{entry['bytes_total'] / 1e6:.3f} MB  {entry['wall_seconds']:.1f} s"
                          + (f"  [yellow]warning: {entry['warning']}[/]" if entry.get("warning") else ""))
        else:
            console.print(f"[red]failed[/]  {entry['name']}: {entry.get('error')}")

    index = run_sweep(plan, sweep_dir, jobs=jobs, cpus=cpus, on_done=on_done)
    failed = [r["name"] for r in index["runs"] if r["status"] != "done"]
    console.print(f"{len(index['runs']) - len(failed)} of {len(index['runs'])} runs finished "
                  f"({index['wall_seconds']:.1f} s this time); index {sweep_dir / 'sweep.json'}")
    if report and len(failed) < len(index["runs"]):
        from fedcomp.analysis.report import build_report

        console.print(f"report {build_report(sweep_dir)}")
    if failed:
        raise SystemExit(1)


@app.command("report")
def report_command(
    path: Annotated[Path, typer.Argument(help="a run folder or a sweep folder")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default <folder>/report.html)")]
    = None,
    metric: Annotated[str, typer.Option(help="final_accuracy or best_accuracy")] = "final_accuracy",
    scheme: Annotated[Optional[list[str]], typer.Option(help="setting that names the scheme, repeatable "
                                                        "(default: the varied ones of output.preset, up.scheme, "
                                                        "down.scheme)")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="scheme whose best accuracy sets the target "
                                                    "(default: the best of all)")] = None,
    within: Annotated[float, typer.Option(help="target = baseline accuracy minus this (0.01 = 1 pp)")] = 0.01,
) -> None:
    """Write one self-contained HTML report (plots embedded, opens offline) of a run or sweep."""
    from fedcomp.analysis.report import build_report

    typer.echo(build_report(path, out, metric, scheme or None, baseline, within))


# --- FantastIC4 edge emulation (issue 9) ---
@app.command()
def f4(
    model_path: Annotated[Path, typer.Option("--model", "-m", help="model.npz saved by a run (or its run folder)")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="dataset to calibrate and evaluate on")],
    target: Annotated[str, typer.Option(help="calibrated implementation: fpga or asic")] = "fpga",
    sets: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="edge.*/data.*/seed override")] = None,
) -> None:
    """Evaluate a saved model on the emulated FantastIC4: accuracy, and a per-layer cost table."""
    from fedcomp.errors import ModelError
    from fedcomp.run.experiment import run_dataset
    from fedcomp.fantastic4.edge import EdgeEvaluator, compile_and_cost, edge_metrics, layer_table, summary_line
    from fedcomp.records.saved_model import load_model

    config = resolve({"dataset": dataset, "edge.fantastic4": True, "edge.target": target},
                     dict(parse_assignment(a) for a in sets or []))
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    model, meta = load_model(model_path)
    bundle = run_dataset(config)
    if (bundle.num_classes, list(bundle.input_shape)) != (meta["num_classes"], meta["input_shape"]):
        raise ModelError(f"the saved model takes {meta['input_shape']} inputs and {meta['num_classes']} classes; "
                         f"{dataset} has {list(bundle.input_shape)} and {bundle.num_classes}")
    edge = EdgeEvaluator.from_config(config)
    compiled, cost = compile_and_cost(model, edge.settings, edge.calibration)
    metrics = edge_metrics(compiled, cost, edge.test)
    typer.echo(f"{meta['model']} on {dataset}: FantastIC4 accuracy {metrics['f4_accuracy']:.4f} "
               f"({len(edge.test.dataset)} test examples, {config['edge.act_bits']}-bit activations)")
    typer.echo(layer_table(cost))
    typer.echo(summary_line(cost))


# --- pretraining for transfer (issue 19) ---
@app.command("pretrain")
def pretrain_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="weights file: .pt (torch state dict) or .npz "
                                      "(fedcomp's saved model); init.weights reads both")],
    preset_names: PresetOption = None,
    config_file: ConfigOption = None,
    assignments: SetOption = None,
    epochs: Annotated[int, typer.Option(help="epochs over the whole training set")] = 5,
) -> None:
    """Train the model centrally on a source dataset, with the run settings, and write the weights for init.weights."""
    from fedcomp.records.saved_model import save_run_model
    from fedcomp.run.experiment import pretrain

    config = build_config(preset_names or ["default"], config_file, assignments or [])
    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1; got {epochs}")
    if os.getcwd() not in sys.path:  # python: plugins next to the user
        sys.path.insert(0, os.getcwd())

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        typer.echo(f"epoch {epoch:>3}  train loss {metrics['train_loss']:.4f}  train acc "
                   f"{metrics['train_accuracy']:.4f}  test acc {metrics['accuracy']:.4f}")

    model = pretrain(config, epochs, on_epoch)
    typer.echo(f"{config['model']} pretrained on {config['dataset']} written to "
               f"{save_run_model(out, model, config)}")


@app.command()
def presets(
    show: Annotated[Optional[str], typer.Option("--show", help="print this preset's settings as TOML")] = None,
) -> None:
    """List the available presets, or print one as a TOML table to copy and change."""
    if show is not None:
        import tomli_w

        preset(show)  # unknown names get the usual one-line error
        nested: dict = {}
        for key, value in PRESETS[show][1].items():
            *tables, leaf = key.split(".")
            table = nested
            for name in tables:
                table = table.setdefault(name, {})
            table[leaf] = value
        typer.echo(tomli_w.dumps(nested), nl=False)
        return
    width = max(len(name) for name in PRESETS)
    for name, (description, _) in PRESETS.items():
        flagship = " (the flagship: what a bare `fedcomp run` runs)" if name == FLAGSHIP else ""
        typer.echo(f"{name:<{width}}  {kind(name):<11}  {description}{flagship}")


def main() -> None:
    """Console entry point: bad input ends in one readable line, not a traceback."""
    try:
        app(standalone_mode=True)
    except FedcompError as err:
        console.print(f"[red]error:[/] {err}")
        raise SystemExit(2) from None
