"""Measuring Flower messages for the `fedcomp.records.meter.TransferMeter`."""

from __future__ import annotations

from flwr.app import Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


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
