"""The fedcomp ClientApp: local training and evaluation on one client's partition.

Messages follow Flower's conventions, so the app also serves Flower's stock strategies:
the server sends ``arrays`` (the global model) and ``config``; a training reply carries
``arrays`` (the local model) and ``metrics`` with ``num-examples``. The partition a node
holds comes from its node config (``partition-id``, ``num-partitions``), which Flower's
Simulation Engine sets and a SuperNode takes via ``--node-config``.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcomp.config import from_run_config
from fedcomp.experiment import client_indices, client_loader, local_seed, run_model
from fedcomp.params import ParamManifest, load_arrays, state_arrays
from fedcomp.training import TrainSettings, evaluate, train
from fedcomp.channels import DenseChannel
from fedcomp.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID

app = ClientApp()


def _partition_id(context: Context, config: dict) -> int:
    pid = int(context.node_config.get("partition-id", -1))
    parts = int(context.node_config.get("num-partitions", config["num_clients"]))
    if pid < 0:
        raise ValueError("this node has no 'partition-id' in its node config (start it with "
                         "--node-config 'partition-id=N num-partitions=M')")
    if parts != config["num_clients"]:
        raise ValueError(f"node config says num-partitions={parts} but the run has num_clients={config['num_clients']}")
    return pid


def _setup(msg: Message, context: Context) -> tuple[dict, int, torch.nn.Module]:
    config = from_run_config(context.run_config)
    torch.set_num_threads(int(config["sim.threads"]))
    pid = _partition_id(context, config)
    model = run_model(config, context.node_config)
    load_arrays(model, DenseChannel().decode(msg.content[ARRAYS], ParamManifest.from_model(model)))
    return config, pid, model


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's setup query with this node's partition id and example count."""
    config = from_run_config(context.run_config)
    pid = _partition_id(context, config)
    metrics = MetricRecord({PARTITION_ID: pid, NUM_EXAMPLES: len(client_indices(config, pid, context.node_config))})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    """Train the received global model on the local partition; reply with the local model."""
    config, pid, model = _setup(msg, context)
    server_round = int(msg.content[CONFIG].get("server-round", 0))
    loader = client_loader(config, pid, server_round, context.node_config)
    torch.manual_seed(local_seed(config, server_round, pid))
    stats = train(model, loader, TrainSettings.from_config(config))
    metrics = MetricRecord({**stats, NUM_EXAMPLES: len(loader.dataset), PARTITION_ID: pid})
    reply = RecordDict({ARRAYS: DenseChannel().encode(state_arrays(model)), METRICS: metrics})
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_step(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local partition."""
    config, pid, model = _setup(msg, context)
    stats = evaluate(model, client_loader(config, pid, 0, context.node_config))
    metrics = MetricRecord({"loss": stats["loss"], "accuracy": stats["accuracy"],
                            NUM_EXAMPLES: stats["num_examples"], PARTITION_ID: pid})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)
