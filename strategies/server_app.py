"""The fedcomp ServerApp: builds the run from its settings and drives a strategy round by round.

After every round it evaluates the global model on the central test set, appends a row
to the run's ``rounds.jsonl`` and replaces the run's checkpoint (`fedcomp.records.checkpoint`); at
the end it writes ``summary.json`` and the plot. A round whose central test loss shows the run
diverged (`fedcomp.records.divergence`) stops the run before its row and checkpoint are written;
a run that finishes at chance accuracy says so in its summary and log. With ``output.resume``
it continues from the run folder's checkpoint instead of starting at round 1.
`serve` holds all of that for any Flower strategy, so that a baseline (Flower's stock
FedAvg in ``benchmarks/``) runs under exactly the same conditions.
"""

from __future__ import annotations

import time
from pathlib import Path
from logging import ERROR, INFO, WARNING
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedcomp.errors import DivergedError
from fedcomp.records import checkpoint
from fedcomp.records.divergence import DivergenceRules, chance_warning
from fedcomp.records.results import write_diverged
from fedcomp.exchange.channels import dense_record, record_tensors
from fedcomp.exchange.client_state import prune, state_root
from fedcomp.run.config import from_run_config
from fedcomp.run.experiment import eval_loader, run_dataset, run_model
from fedcomp.fantastic4.edge import EdgeEvaluator
from fedcomp.records.saved_model import save_final_model
from fedcomp.records.meter import TransferMeter
from fedcomp.compress.params import ParamManifest, load_arrays, state_arrays
from fedcomp.records.results import RunRecorder, run_folder
from fedcomp.local.training import evaluate
from fedcomp.exchange.updates import UpdateSettings
from strategies.differential import DifferentialFedAvg
from strategies.fedavg import FedAvg
from strategies.replies import UpdateBound
from strategies.sampling import Sampler

app = ServerApp()

StrategyBuilder = Callable[[dict[str, Any], torch.nn.Module], Strategy]


@runtime_checkable
class Observed(Protocol):
    """What `serve` reads from a fedcomp strategy; a stock Flower strategy offers none of it and
    then runs with dense initial weights, no byte figures and no client timings."""

    meter: TransferMeter
    failed_rounds: int  # rounds in a row, up to the latest, in which every sampled client failed

    def initial_arrays(self, model_tensors: dict[str, np.ndarray]) -> ArrayRecord: ...

    def model_tensors(self, arrays: ArrayRecord) -> dict[str, np.ndarray]: ...

    def round_timings(self, server_round: int) -> dict[str, float]: ...

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], server_round: int) -> None: ...

class Continued(Strategy):
    """``inner`` continued after round ``done``: Flower's loop counts rounds from 1, ``inner`` sees the run's.

    Parameters
    ----------
    inner : Strategy
        The strategy, its state restored to the end of round ``done``.
    done : int
        The last completed round.
    """

    def __init__(self, inner: Strategy, done: int) -> None:
        self.inner, self.done = inner, done

    def summary(self) -> None:
        log(INFO, "\t├──> resumed after round %d", self.done)
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.done, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_train(server_round + self.done, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.done, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.done, replies)


class UpdateDump:
    """Streams client updates (local minus global) to ``folder/r{round:04d}.npz``, keys ``c{partition}/{param}``.

    Each round's file is written whole as the round is aggregated, atomically (a temporary
    file, fsync, rename): nothing is held between rounds, and a resumed run simply rewrites
    the rounds after its checkpoint.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __call__(self, server_round: int, updates: dict[int, dict[str, np.ndarray]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        checkpoint.write_npz_atomic(self.folder / f"r{server_round:04d}.npz",
                                    {f"c{p}/{name}": v for p, update in updates.items() for name, v in update.items()})


def serve(grid: Grid, context: Context, build_strategy: StrategyBuilder) -> Path:
    """Run ``build_strategy``'s strategy for the configured rounds; write the run's files into the returned folder.

    An `Observed` strategy gets its bytes and client timings recorded and is checkpointed
    after every round; ``round_seconds`` is the wall time from the end of one round's
    central evaluation to the end of the next.
    """
    config = from_run_config(context.run_config)
    run_dir = run_folder(config)
    model = run_model(config)
    initial = state_arrays(model)
    strategy = build_strategy(config, model)
    observed = strategy if isinstance(strategy, Observed) else None
    restored = checkpoint.load(run_dir) if config["output.resume"] and observed else None
    if config["output.resume"] and restored is None:
        log(WARNING, "%s has no checkpoint: the run starts at round 1", run_dir)
    recorder = RunRecorder(run_dir, config, observed.meter if observed else None,
                           ParamManifest.from_model(model).dense_bytes,
                           (restored.rows, restored.initial) if restored else None)
    test = eval_loader(config)
    rules = DivergenceRules.from_config(config)
    # FantastIC4 edge client: checked at start-up, f4_* metrics in round_end
    edge = EdgeEvaluator.from_config(config)
    if edge is not None:
        edge.check(model)
    clock = {"t": time.perf_counter()}

    def round_end(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_arrays(model, observed.model_tensors(arrays) if observed else record_tensors(arrays))
        metrics = evaluate(model, test)
        now = time.perf_counter()
        if server_round == 0:
            recorder.initial_evaluation(metrics)
        else:  # a diverged round leaves no row and no checkpoint: the last good round's stay
            rules.check_loss(server_round, metrics["loss"], recorder.initial["loss"] if recorder.initial else None)
            f4 = edge.evaluate(model) if edge is not None and edge.due(server_round, int(config["rounds"])) else {}
            recorder.round_done(server_round, metrics, now - clock["t"],
                                observed.round_timings(server_round) if observed else None, f4)
        # a round in which every sampled client failed is not checkpointed: the last good one stays
        if server_round and observed and config["output.checkpoint"] and not observed.failed_rounds:
            arrays_state, meta = observed.state_dict()
            checkpoint.save(run_dir, checkpoint.Checkpoint(server_round, record_tensors(arrays), arrays_state, meta,
                                                           recorder.rows, recorder.initial, checkpoint.rng_states()))
        clock["t"] = time.perf_counter() if edge is not None else now  # edge evaluation is not round time
        return MetricRecord({"accuracy": metrics["accuracy"], "loss": metrics["loss"]})

    start = observed.initial_arrays(initial) if observed else dense_record(initial)
    runner, evaluate_fn, done = strategy, round_end, 0
    if restored is not None:
        done = restored.round
        observed.load_state_dict(restored.strategy_arrays, restored.strategy_meta, done)
        start = dense_record(restored.global_tensors)
        clients = state_root(config, {})
        if clients is not None and clients.is_dir():
            prune(clients, done)
        runner = Continued(strategy, done)
        evaluate_fn = lambda r, arrays: round_end(r + done, arrays) if r else None  # noqa: E731
        checkpoint.restore_rng(restored.rng)
        log(INFO, "resuming %s after round %d of %d", run_dir, done, int(config["rounds"]))
    try:
        runner.start(grid=grid, initial_arrays=start, num_rounds=int(config["rounds"]) - done,
                     timeout=float(config["server.round_timeout"]),  # late replies count as failures
                     train_config=ConfigRecord(), evaluate_fn=evaluate_fn)
    except DivergedError as err:  # no summary: the checkpoint and rows of the last good round stay
        write_diverged(run_dir, err)
        log(ERROR, "%s", err)
        raise
    warning = chance_warning(recorder.rows[-1]["accuracy"] if recorder.rows else None,
                             run_dataset(config).num_classes)
    recorder.finish(warning)
    if warning:
        log(WARNING, "%s", warning)
    save_final_model(run_dir, model, config)  # issue 9: output.save_model
    return run_dir


def build_strategy(config: dict[str, Any], model: torch.nn.Module,
                   on_client_update: Callable | None = None) -> FedAvg:
    """FedAvg, or compressed FedAvg when the run compresses client updates (``up.*`` settings)."""
    settings = UpdateSettings.from_config(config)
    common = dict(sampler=Sampler(fraction_train=float(config["fraction"]),
                                  min_train_nodes=int(config["server.min_clients"]),
                                  fraction_evaluate=1.0 if config["eval.federated"] else 0.0, seed=int(config["seed"]),
                                  discovery=str(config["server.discovery"]), expected=int(config["num_clients"])),
                  meter=TransferMeter(), on_client_update=on_client_update,
                  bound=UpdateBound(float(config["server.max_update_norm"]), str(config["server.norm_action"])),
                  min_results=int(config["server.min_results"]),
                  max_failed_rounds=DivergenceRules.from_config(config).max_failed_rounds)
    manifest = settings.manifest(model)
    if not settings.differential:
        return FedAvg(manifest, **common)
    return DifferentialFedAvg(manifest, settings, settings.sent_names(model, manifest), model,
                              seed=int(config["seed"]),
                              **common)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = from_run_config(context.run_config)
    dump = None
    if config["output.dump_updates"]:  # streamed into the run folder, which is therefore fixed here
        run_dir = run_folder(config)
        context.run_config["output.dir"] = str(run_dir)
        dump = UpdateDump(run_dir / "updates")

    def strategy(config: dict[str, Any], model: torch.nn.Module) -> FedAvg:
        return build_strategy(config, model, dump)

    serve(grid, context, strategy)
