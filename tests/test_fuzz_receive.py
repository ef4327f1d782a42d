"""10,000 fuzzed payloads through the strategy's receive path (``aggregate_train``), not only the decoder.

Each fuzzed payload travels in a real Flower reply (serialised and inflated as over a
SuperLink) from a sampled node, mixed with the good replies of two real clients. Every
fuzzed reply must be dropped with one WARNING line naming its node and the decoder's
``PayloadError``, none may take the strategy 100 ms or more, and the round must aggregate
the good replies exactly as a twin strategy that saw only them. The slow cases together
send 10,000 (fsfl-bidir 4,500, topk-ef 4,000, dense FedAvg 1,500).
"""

import gc
import logging
import struct
import time
import zlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from clients.client_app import app as client_app
from fedcomp.exchange.channels import MAX_PAYLOADS, PAYLOAD_STYPE, max_payload_bytes, payload_record, record_tensors
from fedcomp.compress.codec import wire
from fedcomp.compress.codec.wire import _varint
from fedcomp.run.config import resolve
from fedcomp.errors import PayloadError
from fedcomp.run.experiment import run_model
from fedcomp.compress.params import state_arrays
from fedcomp.run.presets import PRESETS
from fedcomp.compress.quant.tensor import QuantKind
from strategies.loopback import LoopbackGrid, wire_round_trip
from strategies.server_app import build_strategy

GOOD = {11: 0, 13: 1}  # real client nodes -> partition
BATCH = 500  # fuzzed replies per round
LIMIT_S = 0.1


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def varint_end(data: bytes, at: int) -> int:
    while data[at] & 0x80:
        at += 1
    return at + 1


def payload_mutants(good: bytes, manifest_len: int, rng: np.random.Generator) -> list[bytes]:
    """One of each kind of bad payload, derived from a good one."""
    body = good[:-4]
    count_end = varint_end(body, 5)
    flipped = bytearray(good)
    for at in rng.choice(len(good) * 8, size=rng.integers(1, 4), replace=False):  # <= 3 bits: CRC32 sees them
        flipped[at // 8] ^= 1 << (at % 8)
    head_end = body_length_at(good, manifest_len)
    maxed = [b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\x7f", b"\xff\xff\xff\xff\xff\x01",
             _varint(manifest_len + 1), _varint(2**31)]
    field = maxed[rng.integers(len(maxed))]
    codebook = rng.integers(65_537, 2**32)
    return [
        rng.bytes(int(rng.integers(0, 2 * len(good)))),  # random
        with_crc(good[:5] + rng.bytes(int(rng.integers(0, len(good))))),  # random behind a valid header
        good[: rng.integers(0, len(good))],  # truncated
        bytes(flipped),  # bit-flipped
        with_crc(body[:5] + field + body[count_end:]),  # tensor count maxed
        with_crc(body[:head_end] + field + body[varint_end(body, head_end):]),  # body length maxed
        with_crc(good[:5] + b"\x01\x00" + bytes([QuantKind.CODEBOOK]) + b"\x00" + _varint(int(codebook))
                 + rng.bytes(64)),  # codebook size maxed
        with_crc(body[:count_end] + field + body[varint_end(body, count_end):]),  # first tensor index maxed
    ]


def body_length_at(payload: bytes, manifest_len: int) -> int:
    """Where the body-length varint of a valid payload starts (its header re-read field by field)."""
    reader = wire._Reader(payload, len(payload) - 4)
    reader.pos = 5
    for _ in range(reader.varint("count", manifest_len)):
        reader.varint("index", manifest_len)
        kind = reader.take(1, "kind")[0]
        if kind != wire._REPEAT:
            wire._read_entry(reader, kind, 0)
    return reader.pos


def payload_records(good: bytes, manifest, rng: np.random.Generator) -> list[ArrayRecord]:
    """Bad records of coded payloads: bad payloads, and bad records around good ones."""
    records = [payload_record([p]) for p in payload_mutants(good, len(manifest), rng)]
    raw = payload_record([good])["p0"]
    records += [
        payload_record([good, good]),  # two payloads where one is expected
        ArrayRecord({"p1": raw}),  # misnamed
        ArrayRecord({"p0": Array(dtype="uint8", shape=raw.shape, stype="numpy.ndarray", data=raw.data)}),
        ArrayRecord({"p0": Array(dtype="float32", shape=raw.shape, stype=PAYLOAD_STYPE, data=raw.data)}),
        ArrayRecord({"p0": Array(dtype="uint8", shape=(2**40,), stype=PAYLOAD_STYPE, data=good)}),
        payload_record([b"FC\x01" + b"\0" * max_payload_bytes(manifest)]),  # oversized
    ]
    return records


def many_arrays(good: ArrayRecord, dense: bool) -> ArrayRecord:
    """A record with more arrays than any reply may hold (costly to meter: one per round)."""
    if not dense:
        return payload_record([b"FC"] * (MAX_PAYLOADS + 1))
    return ArrayRecord({**{k: good[k] for k in good.keys()}, **{f"x{i}": Array(np.zeros(1, np.float32))
                                                              for i in range(MAX_PAYLOADS)}})


def dense_records(good: dict[str, np.ndarray], rng: np.random.Generator) -> list[ArrayRecord]:
    """Bad dense records: one tensor's bytes or metadata damaged, or the wrong set of tensors."""
    names = list(good)
    name = names[rng.integers(len(names))]
    right = Array(good[name])
    header_len = right.data.index(b"\n") + 1

    def replaced(array: Array) -> ArrayRecord:
        return ArrayRecord({**{k: Array(v) for k, v in good.items()}, name: array})

    def npy(shape, descr="<f4", data_bytes=None) -> Array:
        import io

        stream = io.BytesIO()
        np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
        data = stream.getvalue() + right.data[header_len:][: data_bytes]
        return Array(dtype="float32", shape=right.shape, stype="numpy.ndarray", data=data)

    flipped = bytearray(right.data)
    flipped[rng.integers(header_len)] ^= 1 << rng.integers(8)
    huge = (int(rng.integers(2**31, 2**62)),)
    return [
        replaced(Array(dtype="float32", shape=right.shape, stype="numpy.ndarray",
                       data=rng.bytes(int(rng.integers(0, len(right.data) * 2))))),  # random
        replaced(Array(dtype="float32", shape=right.shape, stype="numpy.ndarray",
                       data=right.data[: rng.integers(0, len(right.data))])),  # truncated
        replaced(Array(dtype="float32", shape=right.shape, stype="numpy.ndarray", data=bytes(flipped))),
        replaced(npy(huge)),  # header length field maxed: np.load would allocate it
        replaced(npy((int(np.prod(right.shape)),))),  # header shape unlike the Array's
        replaced(npy(right.shape, descr=["<f8", ">f4", "|O", "<i4"][rng.integers(4)])),
        replaced(Array(dtype="float32", shape=huge, stype="numpy.ndarray", data=right.data)),
        ArrayRecord({k: Array(v) for k, v in good.items() if k != name}),  # a tensor missing
    ]


def timed(replies: list[Message], spent: list[tuple[float, float]]):
    """The replies one by one, noting the (wall, this thread's CPU) seconds the strategy spends on each."""
    for reply in replies:
        wall, cpu = time.perf_counter(), time.thread_time()
        yield reply
        spent.append((time.perf_counter() - wall, time.thread_time() - cpu))


@pytest.mark.parametrize("preset,total", [
    ("fsfl-bidir", 500), ("", 500),  # a sample in the fast suite; the 10,000 (about 90 s here) are slow
    pytest.param("fsfl-bidir", 4500, marks=pytest.mark.slow), pytest.param("topk-ef", 4000, marks=pytest.mark.slow),
    pytest.param("", 1500, marks=pytest.mark.slow)])
def test_fuzzed_payloads_are_rejected_by_the_strategy_and_the_round_completes(task_identity, caplog, preset,
                                                                             total):
    config = resolve(PRESETS[preset][1] if preset else {}, {"num_clients": len(GOOD), "seed": 3})
    model = run_model(config)
    strategy, twin = build_strategy(config, model), build_strategy(config, model)
    grid = LoopbackGrid(client_app, GOOD, config)
    arrays = strategy.initial_arrays(state_arrays(model))
    good_replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    assert not any(r.has_error() for r in good_replies)
    arrays, _ = strategy.aggregate_train(1, good_replies)
    good_content = {r.metadata.src_node_id: r.content for r in good_replies}
    twin_arrays = twin.initial_arrays(state_arrays(model))
    twin_arrays, _ = twin.aggregate_train(1, [Message(good_content[m.metadata.dst_node_id], reply_to=m)
                                              for m in twin.configure_train(1, twin_arrays, ConfigRecord(), grid)])
    example = good_replies[0].content["arrays"]
    dense = not preset
    good_examples = sum(int(r.content["metrics"]["num-examples"]) for r in good_replies)
    rng = np.random.default_rng(20261129)
    fuzz_nodes = [100_000 + i for i in range(BATCH)]
    strategy.sampler.partition_of.update({node: len(GOOD) + i for i, node in enumerate(fuzz_nodes)})

    spent: list[tuple[float, float]] = []
    rejected, skipped = 0, 0
    for server_round in range(2, 2 + total // BATCH):
        sent = {m.metadata.dst_node_id: m for m in strategy.configure_train(server_round, arrays, ConfigRecord(),
                                                                             grid)}
        twin_sent = {m.metadata.dst_node_id: m
                     for m in twin.configure_train(server_round, twin_arrays, ConfigRecord(), grid)}
        assert set(sent) == set(GOOD) | set(fuzz_nodes)
        bad: dict[int, str] = {}  # node -> the decoder's own PayloadError message
        pool = [many_arrays(example, dense)]
        replies = []
        for node in fuzz_nodes:
            while True:
                if not pool:
                    pool = (dense_records(record_tensors(example), rng) if dense
                            else payload_records(example["p0"].data, strategy.manifest, rng))
                record = pool.pop()
                try:
                    strategy.upstream.decode(record, strategy.manifest)
                except PayloadError as err:
                    bad[node] = str(err)
                    break
                skipped += 1  # a mutant that is still a valid payload is not a fuzz case
            content = RecordDict({"arrays": record, "metrics": good_content[11]["metrics"]})
            replies.append(wire_round_trip(Message(content, reply_to=sent[node]))[0])
        replies += [wire_round_trip(Message(good_content[node], reply_to=sent[node]))[0] for node in GOOD]
        order = rng.permutation(len(replies))
        caplog.clear()
        gc.collect()
        gc.freeze()  # GC pauses over the test's own heap (all these replies) are not the strategy's time
        try:
            with caplog.at_level(logging.WARNING):
                new, metrics = strategy.aggregate_train(server_round, timed([replies[i] for i in order], spent))
        finally:
            gc.unfreeze()
        twin_new, _ = twin.aggregate_train(server_round, [Message(good_content[n], reply_to=twin_sent[n])
                                                          for n in GOOD])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == BATCH  # one line per fuzzed reply, nothing else
        for node, reason in bad.items():
            line = (f"round {server_round}: node {node} (partition {strategy.sampler.client_of(node)}) failed: "
                    f"dropped its reply: PayloadError: {reason}")
            assert line in warnings, line
        rejected += len(bad)
        # the good replies are aggregated as if the fuzzed ones had never been sent
        assert metrics["num-examples"] == good_examples
        got, want = record_tensors(new), record_tensors(twin_new)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
        arrays, twin_arrays = new, twin_new
        assert len(strategy.meter.select(round=server_round, direction="up")) == BATCH + len(GOOD)
    # mutants that still decode (a flipped bit in a .npy header's padding) are not fuzz cases: few
    assert rejected == total and skipped < total // 10
    assert len(spent) == (total // BATCH) * (BATCH + len(GOOD))
    # CPU time is what the server spends; wall time on this shared machine adds other processes' turns
    wall, cpu = np.array(spent).T
    print(f"{preset or 'dense'}: {total} fuzzed replies, wall ms median {1e3 * np.median(wall):.2f} "
          f"max {1e3 * wall.max():.1f}, CPU ms max {1e3 * cpu.max():.1f}")
    assert cpu.max() < LIMIT_S and np.median(wall) < LIMIT_S / 10
