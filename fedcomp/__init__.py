"""fedcomp: federated-learning simulations that measure communication, built on Flower.

The core library lives here and runs without Flower or Ray: settings (`config`, `presets`),
transfer accounting (`meter`), results and plots, training loops, the dataset and model
registries (`data`, `models`), and the compression core (`quant`, `codec`, `compression`).
The Flower wiring is in the sibling packages `strategies` (server) and `clients`.
"""

__version__ = "0.1.0"
