"""The keys of fedcomp's messages, shared by the server and the ClientApp.

They follow Flower's stock conventions (``arrays``, ``config``, ``metrics``,
``num-examples``), so stock strategies and clients interoperate with fedcomp's.
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
