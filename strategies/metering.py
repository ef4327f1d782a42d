"""Measuring Flower messages for the `fedcomp.records.meter.TransferMeter`."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedcomp.exchange.channels import Encoded, record_bytes
from fedcomp.exchange.protocol import ARRAYS, CONFIG
from fedcomp.records.meter import TransferMeter


def content_size(content: RecordDict) -> int:
    """Bytes of a message's content as Flower serialises it: every distinct object once.

    Flower ships content as a tree of content-addressed objects (record dict, records,
    arrays, array chunks); identical objects travel once, so they count once.
    """
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def serialized_size(message: Message, content_bytes: int | None = None) -> int:
    """Bytes Flower serialises to move ``message``: its own object plus its content's.

    Pass ``content_bytes`` when many messages share one content (a broadcast), so that it
    is measured once rather than per message.
    """
    if content_bytes is None:
        content_bytes = content_size(message.content) if message.has_content() else 0
    return len(message.deflate()) + content_bytes


def meter_sent(meter: TransferMeter, server_round: int, client: int, kind: str, encoded: Encoded,
               message: Message, content_bytes: int | None = None) -> None:
    """Record a message the server sends, carrying ``encoded`` (``content_bytes``: see `serialized_size`)."""
    meter.record(server_round, "down", client, kind, encoded.payload_bytes, serialized_size(message, content_bytes),
                 encoded.dense_bytes)


def meter_reply(meter: TransferMeter, server_round: int, client: int, kind: str, reply: Message,
                dense_bytes: int) -> None:
    """Record a reply, whatever it holds (``dense_bytes``: float32 bytes of what it decoded to, 0 if unusable)."""
    record = reply.content.array_records.get(ARRAYS) if reply.has_content() else None
    meter.record(server_round, "up", client, kind, record_bytes(record), serialized_size(reply), dense_bytes)


def meter_setup(meter: TransferMeter, asked: list[Message], replies: list[Message],
                client_of: Callable[[int], int]) -> None:
    """Record the setup queries and their replies as round 0, kind ``setup`` (no model content)."""
    for msg in asked:
        meter.record(0, "down", client_of(msg.metadata.dst_node_id), "setup", 0, serialized_size(msg), 0)
    for reply in replies:
        meter.record(0, "up", client_of(reply.metadata.src_node_id), "setup", 0, serialized_size(reply), 0)


def broadcast(meter: TransferMeter, server_round: int, encoded: Encoded, config: ConfigRecord, nodes: list[int],
              message_type: str, client_of: Callable[[int], int]) -> list[Message]:
    """One message of ``encoded`` and ``config`` per node, all with the same content (measured once), each
    metered (kind ``train`` or ``evaluate``, after ``message_type``) under the client ``client_of`` names."""
    content = RecordDict({ARRAYS: encoded.record, CONFIG: config})
    shared = content_size(content)
    kind = "train" if message_type == MessageType.TRAIN else "evaluate"
    messages = [Message(content, node, message_type) for node in nodes]
    for msg in messages:
        meter_sent(meter, server_round, client_of(msg.metadata.dst_node_id), kind, encoded, msg, shared)
    return messages
