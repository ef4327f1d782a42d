"""Entropy codecs behind one interface, and the wire format of a payload."""

from fedcomp.compress.codec.base import Codec, codec_names, get_codec
from fedcomp.compress.codec.wire import FLAG_FULL_MODEL, Payload, decode_payload, encode_payload

__all__ = ["FLAG_FULL_MODEL", "Codec", "Payload", "codec_names", "decode_payload", "encode_payload", "get_codec"]
