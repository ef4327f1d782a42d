"""The keys of fedcomp's messages, shared by the server and the ClientApp.

They follow Flower's stock conventions (``arrays``, ``config``, ``metrics``,
``num-examples``), so stock strategies and clients interoperate with fedcomp's. The
``fedcomp-*`` keys belong to compressed runs (DESIGN 3): the version a model has reached
(the number of global updates applied to the seed-built ``W_0``), the version a catch-up
replay starts from, and a digest of the model that the client checks after decoding.
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
SERVER_ROUND = "server-round"

VERSION = "fedcomp-version"  # config: the version the client holds after decoding; metrics: the one it held
BASE_VERSION = "fedcomp-base"  # config: the version the first replayed payload applies to, or FULL_MODEL
DIGEST = "fedcomp-digest"  # config: digest of the model at VERSION

#: The BASE_VERSION of a message that carries the whole model (`Channel.encode_model`), not updates;
#: and the version the server records for a client whose copy it cannot vouch for, which therefore
#: gets the whole model next.
FULL_MODEL = -1

# client timings reported in a training reply's metrics (seconds)
TRAIN_SECONDS = "train-seconds"
COMPRESS_SECONDS = "compress-seconds"
DECODE_SECONDS = "decode-seconds"
TIMINGS = (TRAIN_SECONDS, COMPRESS_SECONDS, DECODE_SECONDS)
