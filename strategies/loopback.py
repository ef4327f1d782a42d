"""A Flower ``Grid`` that delivers real messages to the real ClientApp in this process.

Every message (and every reply) is serialised to Flower's object bytes and inflated back,
exactly as it would cross a SuperLink, and the bytes moved are counted independently of
fedcomp's meter. No Ray, no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from strategies.server_app import build_strategy, serve
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents


def wire_round_trip(message: Message) -> tuple[Message, int]:
    """The message as the receiver sees it, and the bytes that carried it."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    size = sum(len(c) for c in contents.values())
    return inflate_object_from_contents(message.object_id, contents), size


class LoopbackGrid(Grid):
    """Nodes ``node_id -> partition id``, each with its own persistent ``Context``."""

    def __init__(self, client_app: ClientApp, partitions: Mapping[int, int], run_config: dict) -> None:
        self.client_app = client_app
        self.contexts = {
            node: Context(run_id=1, node_id=node,
                          node_config={"partition-id": pid, "num-partitions": len(partitions)},
                          state=RecordDict(), run_config=dict(run_config))
            for node, pid in partitions.items()
        }
        self.bytes_down: dict[int, int] = {}
        self.bytes_up: dict[int, int] = {}
        self.drop_reply_of: set[int] = set()
        self.tamper: dict[int, callable] = {}

    def set_run(self, run) -> None:  # noqa: D401 - not needed in a loopback
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            received, size = wire_round_trip(message)
            self.bytes_down[node] = self.bytes_down.get(node, 0) + size
            try:
                reply = self.client_app(received, self.contexts[node])
            except Exception as err:  # noqa: BLE001 - Flower turns a ClientApp's exception into an error reply
                reply = Message(Error(code=2, reason=f"{type(err)}:<'{err}'>"), reply_to=received)
            if node in self.tamper:
                reply = self.tamper[node](reply)
            reply, size = wire_round_trip(reply)
            self.bytes_up[node] = self.bytes_up.get(node, 0) + size
            replies.append(reply)
        return replies


def run_loopback(config: Mapping[str, Any], client_app: ClientApp) -> Path:
    """One whole run of ``config`` (resolved settings) in this process: fedcomp's `serve` and
    ``client_app`` over a `LoopbackGrid` of ``num_clients`` nodes; returns the run folder.

    The same ServerApp code, ClientApp and Flower messages as a simulation, without Ray:
    for benchmarks and tests that need many runs or a process to kill.
    """
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    grid = LoopbackGrid(client_app, {10_000 + 17 * i: i for i in range(int(config["num_clients"]))}, config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    return serve(grid, context, build_strategy)
