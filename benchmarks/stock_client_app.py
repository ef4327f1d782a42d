"""A minimal stock Flower PyTorch ClientApp: the anchor of ``benchmarks/deploy_bench.py``.

Written the way Flower's quickstart-pytorch is (a ``Net``, ``load_data``, ``train``, one
``@app.train()`` handler, plain FedAvg messages), with nothing of fedcomp: no compression, no
settings registry, no partition cache. It trains the same model as fedcomp's default run
(``cnn``: the same layers, so the same state-dict keys and shapes) on the same data (scikit-learn's
digits, the same stratified 75/25 split by ``seed``, normalised the same way), split IID into
``num-partitions`` shards by a seeded permutation, with SGD (``lr``, momentum 0.9) for
``local_epochs`` over batches of ``batch_size``: the work of a fedcomp client on the default workload.

Its imports are what such an app needs: torch, numpy, scikit-learn and Flower.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

app = ClientApp()


def Net() -> nn.Sequential:  # noqa: N802 (the quickstart's name)
    """fedcomp's ``cnn`` for 1x8x8 digits: two 3x3 convs, max-pooling, a 64-unit head."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(512, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def load_data(partition_id: int, num_partitions: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This partition's training images (N, 1, 8, 8) and labels."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    train_x, _, train_y, _ = train_test_split(images, digits.target, test_size=0.25, stratify=digits.target,
                                              random_state=seed)
    train_x = (train_x - train_x.mean()) / train_x.std()
    shard = np.array_split(np.random.default_rng(seed).permutation(len(train_y)), num_partitions)[partition_id]
    return torch.from_numpy(train_x[shard]), torch.from_numpy(train_y[shard].astype(np.int64))


def train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
          batch_size: int) -> float:
    """Local SGD; the mean training loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(batch_size):
            optimizer.zero_grad()
            loss = criterion(net(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition; reply with it and the number of examples."""
    torch.set_num_threads(1)
    partition_id, num_partitions = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    seed = int(context.run_config["seed"])
    images, labels = load_data(partition_id, num_partitions, seed)
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss = train(net, images, labels, int(context.run_config["local_epochs"]), float(context.run_config["lr"]),
                 int(context.run_config["batch_size"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(labels)})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg)
