"""The fedcomp ClientApp: local training and evaluation on one client's partition.

Messages follow Flower's conventions, so the app also serves Flower's stock strategies:
the server sends ``arrays`` (the global model) and ``config``; a training reply carries
``arrays`` and ``metrics`` with ``num-examples``. The partition a node holds comes from its
node config (``partition-id``, ``num-partitions``), which Flower's Simulation Engine sets
and a SuperNode takes via ``--node-config``.

In a compressed run (``up.*`` settings) the reply's ``arrays`` carry one coded payload of
the update ``U = W_local - W_t`` (error feedback applied); in a bidirectional run the
server's ``arrays`` carry the one message that brings this client's model to ``W_t``
(`fedcomp.exchange.catchup`), and the client checks the result against the server's digest
before it trains. What a client keeps between rounds (the counts of its copy of the global
model and their version, its residual and the round it was formed in) is
saved at the end of each round it trains in, in memory or on disk (`fedcomp.exchange.client_state`,
setting ``client.state``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcomp.compress.quant.staleness import age_residual, parse_policy
from fedcomp.exchange.catchup import COUNTS, REPLAY, client_catch_up, grid_fold, settings_grid
from fedcomp.exchange.channels import DenseChannel, State, sender_state
from fedcomp.exchange.client_state import open_state
from fedcomp.run.config import from_run_config
from fedcomp.exchange.faults import FaultPlan, InjectedFault, corrupt
from fedcomp.run.experiment import client_indices, client_loader, local_seed, run_model
from fedcomp.compress.params import load_arrays, state_arrays, state_tensors
from fedcomp.compress.quant.arrays import as_tensor, to_numpy
from fedcomp.local.qat import QATSettings, local_train
from fedcomp.local.relevance import accumulated_relevance
from fedcomp.exchange.protocol import (ARRAYS, BASE_VERSION, COMPRESS_SECONDS, CONFIG, DECODE_SECONDS, DIGEST,
                                       FULL_MODEL, METRICS, NUM_EXAMPLES, PARTITION_ID, SERVER_ROUND, TRAIN_SECONDS,
                                       VERSION)
from fedcomp.local.scaling import compensation, effective, is_scale, scale_updates
from fedcomp.local.training import TrainSettings, evaluate, train
from fedcomp.exchange.updates import Tensors, UpdateSettings
from fedcomp.records.stages import record_stages

app = ClientApp()

VERSION_KEY = "version"  # state: the version of the held counts (FULL_MODEL: none held)
ROUND_KEY = "round"  # state: the round it was saved in (the residual's age)
# the counts (``counts/<name>``) and the upstream sender's state (error feedback, `sender_state`) are kept beside them


def _partition_id(context: Context, config: dict) -> int:
    pid = int(context.node_config.get("partition-id", -1))
    parts = int(context.node_config.get("num-partitions", config["num_clients"]))
    if pid < 0:
        raise ValueError("this node has no 'partition-id' in its node config (start it with "
                         "--node-config 'partition-id=N num-partitions=M')")
    if parts != config["num_clients"]:
        raise ValueError(f"node config says num-partitions={parts} but the run has num_clients={config['num_clients']}")
    return pid


def _setup(context: Context) -> tuple[dict, int, torch.nn.Module, UpdateSettings]:
    config = from_run_config(context.run_config)
    torch.set_num_threads(int(config["sim.threads"]))
    model = run_model(config, context.node_config)
    return config, _partition_id(context, config), model, UpdateSettings.from_config(config)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's setup query with this node's partition id and example count."""
    config = from_run_config(context.run_config)
    pid = _partition_id(context, config)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(client_indices(config, pid, context.node_config))})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    """Train the global model on the local partition; reply with the local model or its coded update."""
    stages = {"entered": time.time()}
    config, pid, model, settings = _setup(context)
    server_round = int(msg.content[CONFIG].get(SERVER_ROUND, 0))
    faults = FaultPlan.from_config(config).draw(server_round, pid)
    if faults["fail"]:
        raise InjectedFault(f"injected failure of partition {pid} in round {server_round} (faults.*)")
    if faults["slow"]:
        time.sleep(float(config["faults.slow_seconds"]))
    manifest = settings.manifest(model)
    store = open_state(config, context.node_config, context.state, pid)
    held = store.load(server_round) if settings.differential else {}
    started = time.perf_counter()
    if settings.bidirectional:
        config_in = msg.content[CONFIG]
        version = int(config_in[VERSION])
        global_tensors, counts = client_catch_up(
            settings_grid(settings, model), msg.content[ARRAYS], int(config_in[BASE_VERSION]), version,
            int(config_in[DIGEST]), held, int(held[VERSION_KEY][0]) if VERSION_KEY in held else 0,
            bool(config_in.get(REPLAY, 0)), grid_fold(settings))
        if counts is None:
            version = FULL_MODEL
    else:
        global_tensors = settings.channel("down", manifest, 0).decode_model(msg.content[ARRAYS], manifest)
        version, counts = 0, None
    decode_seconds = time.perf_counter() - started
    loader = client_loader(config, pid, server_round, context.node_config)
    stages["data_ready"] = time.time()  # model built, message decoded, dataset and partition loaded
    torch.manual_seed(local_seed(config, server_round, pid))
    if not settings.differential:
        load_arrays(model, global_tensors)
        clock = time.perf_counter()
        stats = local_train(model, loader, TrainSettings.from_config(config),
                            QATSettings.from_config(config, server_round))
        reply_record = settings.channel("up", manifest, 0).encode(state_arrays(model))[0].record
        timings = {TRAIN_SECONDS: time.perf_counter() - clock}
    else:
        missed = server_round - int(held[ROUND_KEY][0]) - 1 if ROUND_KEY in held else 0
        upstream = age_residual(sender_state(held), missed, parse_policy(config["sync.stale_residual"]))
        qat = QATSettings.from_config(config, server_round)
        reply_record, stats, timings, sender = _train_differential(config, pid, model, settings, global_tensors,
                                                                   loader, upstream, qat, server_round == 1)
        kept = {COUNTS + k: v for k, v in (counts or {}).items()}
        store.save(server_round, {**kept, VERSION_KEY: np.array([version], np.int64),
                                  ROUND_KEY: np.array([server_round], np.int64),
                                  **{k: to_numpy(v) for k, v in sender.items()}})  # GPU -> host
    if faults["corrupt"]:
        reply_record = corrupt(reply_record, server_round, pid)
    metrics = MetricRecord({**stats, **timings, DECODE_SECONDS: decode_seconds, VERSION: version,
                            NUM_EXAMPLES: len(loader.dataset), PARTITION_ID: pid})
    record_stages("train", {**stages, "trained": time.time()})
    return Message(RecordDict({ARRAYS: reply_record, METRICS: metrics}), reply_to=msg)


def _timed(stage: Callable, spent: list[float]) -> Callable:
    """``stage``, adding the seconds each call takes to ``spent[0]``."""
    def run(*args):
        clock = time.perf_counter()
        try:
            return stage(*args)
        finally:
            spent[0] += time.perf_counter() - clock
    return run


def _train_differential(config: dict, pid: int, model: torch.nn.Module, settings: UpdateSettings,
                        global_tensors: Tensors, loader, state: State, qat: QATSettings | None,
                        first_round: bool) -> tuple[ArrayRecord, dict, dict, State]:
    """Local training and the coded update ``U = W_local - W_t`` (FSFL, partial groups, error feedback).

    ``state`` is the upstream sender's state (the residual); the new one is returned last.
    ``qat``: this round's quantization-aware training, or None. In the first round, joint FSFL
    re-estimates the BatchNorm statistics it sends (`fedcomp.local.training.train`).
    """
    manifest = settings.manifest(model)
    sent = settings.sent_names(model, manifest)
    joint = settings.fsfl == "joint"
    weights = {k: v for k, v in global_tensors.items() if not is_scale(k)}
    # the scales act in every forward pass (kept scales differ from 1); joint mode trains the sent ones
    scales = {k: torch.tensor(v, requires_grad=joint and k in sent) for k, v in global_tensors.items()
              if is_scale(k)}
    load_arrays(model, weights)
    train_settings = TrainSettings.from_config(config)
    sent_scales = {k: v for k, v in scales.items() if k in sent}
    sent_weights = [k for k in sent if not is_scale(k)]

    clock = time.perf_counter()
    if qat is not None:  # quantization-aware local training of the whole model (config checks the combination)
        stats = local_train(model, loader, train_settings, qat)
    else:
        stats = train(model, loader, train_settings, trainable=sent_weights,
                      scales=scales if joint or not settings.fold else None, scale_lr=settings.scale_lr,
                      adapt_batchnorm=first_round)
    train_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    local = state_tensors(model)  # on the training device: the update reaches the host only as symbols
    update = {k: local[k] - as_tensor(global_tensors[k], local[k].device) for k in sent_weights}
    if joint:
        update |= scale_updates(sent_scales, global_tensors)
    relevance = None
    if settings.up.quantizer == "ecqx":  # ECQx: LRP relevances of the local model, summed over local examples
        relevance = accumulated_relevance(model, loader, settings.up.relevance_batch)
    stage_seconds = [0.0]
    second_stage = None
    if settings.fsfl == "compensate":
        scale_settings = dataclasses.replace(train_settings, epochs=settings.scale_epochs)
        fit = lambda m, s: train(m, loader, scale_settings, trainable=[], scales=s,  # noqa: E731
                                 scale_lr=settings.scale_lr)
        second_stage = _timed(compensation(model, scales, sent_scales, global_tensors, fit), stage_seconds)
    channel = settings.channel("up", manifest, seed=int(config["seed"]) * 1_000_003 + pid)
    encoded, state = channel.encode(update, state, relevance=relevance, second_stage=second_stage)
    compress_seconds = time.perf_counter() - clock - stage_seconds[0]
    return encoded.record, stats, {TRAIN_SECONDS: train_seconds + stage_seconds[0],
                                   COMPRESS_SECONDS: compress_seconds}, state


@app.evaluate()
def evaluate_step(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition."""
    config, pid, model, settings = _setup(context)
    load_arrays(model, effective(DenseChannel().decode(msg.content[ARRAYS], settings.manifest(model))))
    stats = evaluate(model, client_loader(config, pid, 0, context.node_config))
    metrics = MetricRecord({"loss": stats["loss"], "accuracy": stats["accuracy"],
                            NUM_EXAMPLES: stats["num_examples"], PARTITION_ID: pid})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)
