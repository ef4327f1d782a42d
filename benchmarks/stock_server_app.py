"""A ServerApp driving Flower's stock ``FedAvg``, the baseline of ``benchmarks/overhead.py``.

It runs under `strategies.server_app.serve`, exactly like fedcomp's own ServerApp (same
settings, model, initial weights, central evaluation and round timing), so the only
difference left is the strategy. The stock strategy meters nothing, so its rows carry
round, accuracy, loss and times only.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import torch

from strategies.server_app import serve

app = ServerApp()


def stock_fedavg(config: dict[str, Any], model: torch.nn.Module) -> FedAvg:
    return FedAvg(fraction_train=float(config["fraction"]), fraction_evaluate=0.0,
                  min_train_nodes=int(config["server.min_clients"]))


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, context, stock_fedavg)
