"""fedcomp: federated-learning simulations that measure communication, built on Flower.

The packages are grouped by role (see the README's Layout): `compress` (the compression core)
and `local` (what a client does to its model) run without Flower; `exchange` holds what the
server and the client share and is the only core package that imports Flower; `run`,
`records`, `launch` and `analysis` configure, record, start and read runs. The Flower wiring
is in the sibling packages `strategies` (server) and `clients`. `make lint` checks the layers.
"""

__version__ = "0.1.0"
