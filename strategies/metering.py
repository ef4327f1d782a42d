"""Measuring Flower messages for the `fedcomp.meter.TransferMeter`."""

from __future__ import annotations

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def serialized_size(message: Message) -> int:
    """Bytes Flower serialises to move ``message``: every distinct object it is made of.

    Flower ships a message as a tree of content-addressed objects (message, record dict,
    records, arrays, array chunks); identical objects travel once, so they count once.
    """
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
