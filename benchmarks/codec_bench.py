"""Entropy-codec benchmark: size and speed of every codec on the same symbols, side by side.

Symbols come from quantizing (i) synthetic sparse Laplacian tensors and (ii) a corpus of
real client updates (``--updates PATH``: a run's ``updates/`` folder written by
``output.dump_updates``, one ``r{round:04d}.npz`` per round with keys ``c{client}/{param}``,
or one ``.npz`` with keys ``r{round}/c{client}/{param}``; one payload per (round, client))
with named compression schemes, each update on its own (no error feedback). Per codec it reports:

- ``bits/param``: coded body bits per parameter (the wire header is reported apart);
- ``x H0``: body size over the zeroth-order entropy of the symbols, per tensor, summed
  (what an ideal static per-tensor model would reach, histogram not counted);
- ``x DeepCABAC``: body size over DeepCABAC's on the same symbols;
- ``enc MB/s``, ``dec MB/s``: float32 input bytes (4 per parameter) over the median
  encode / decode time of the codec step (symbols <-> bytes), summed over payloads.

zstd (level 19) and lzma (preset 6) on the symbols as int16 (int32 where they do not fit)
are given for reference. Every codec runs on every payload ``--repeats`` times,
interleaved, and the median is kept.

    .venv/bin/python benchmarks/codec_bench.py --updates runs/<run>/updates
"""

from __future__ import annotations

import argparse
import lzma
import platform
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fedcomp.compress.codec import get_codec
from fedcomp.compress.codec.deepcabac import available as deepcabac_available
from fedcomp.compress.codec.wire import encode_payload
from fedcomp.compress.compression import SCHEMES, CompressionSpec, Compressor
from fedcomp.compress.params import ParamManifest
from fedcomp.records.provenance import source_commit

try:
    import zstandard
except ImportError:  # dev extra
    zstandard = None

REAL_SCHEMES = ["topk-uniform-ans", "stc", "nnc", "uniform-ans"]
RESULTS = Path(__file__).parent / "results" / "codec.md"


@dataclass
class Coder:
    """A codec under test: encode symbols -> bytes, decode bytes + shapes -> symbols."""

    name: str
    encode: Callable[[list[np.ndarray]], bytes]
    decode: Callable[[bytes, list[tuple[int, ...]]], list[np.ndarray]]


def _narrow(symbols: list[np.ndarray]) -> np.dtype:
    fits = all(s.size == 0 or (s.min() >= -(2**15) and s.max() < 2**15) for s in symbols)
    return np.dtype(np.int16 if fits else np.int32)


def _bytes_coder(name: str, compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]) -> Coder:
    """A general-purpose compressor on the concatenated symbols (first byte: the dtype)."""

    def encode(symbols: list[np.ndarray]) -> bytes:
        dtype = _narrow(symbols)
        flat = np.concatenate([s.reshape(-1) for s in symbols]).astype(dtype)
        return bytes([dtype.itemsize]) + compress(flat.tobytes())

    def decode(data: bytes, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        flat = np.frombuffer(decompress(data[1:]), dtype=np.int16 if data[0] == 2 else np.int32)
        bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        return [flat[a:b].astype(np.int32).reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], shapes)]

    return Coder(name, encode, decode)


def coders() -> list[Coder]:
    out = []
    for name in ["ans", "deepcabac", "raw"]:
        if name == "deepcabac" and not deepcabac_available():
            print("deepcabac: nncodec not installed, skipped (pip install 'fedcomp[deepcabac]')", file=sys.stderr)
            continue
        codec = get_codec(name)
        out.append(Coder(name, codec.encode, codec.decode))
    if zstandard is not None:
        zc, zd = zstandard.ZstdCompressor(level=19), zstandard.ZstdDecompressor()
        out.append(_bytes_coder("zstd-19 (int16)", zc.compress, zd.decompress))
    out.append(_bytes_coder("lzma-6 (int16)", lambda b: lzma.compress(b, preset=6), lzma.decompress))
    return out


def entropy_bits(symbols: Sequence[np.ndarray]) -> float:
    """Zeroth-order entropy of each tensor's symbols, in bits, summed over tensors."""
    total = 0.0
    for s in symbols:
        if s.size:
            _, counts = np.unique(s, return_counts=True)
            total -= float((counts * np.log2(counts / s.size)).sum())
    return total


@dataclass
class Message:
    """One payload's worth of quantized tensors."""

    symbols: list[np.ndarray]
    header_bytes: int

    @property
    def params(self) -> int:
        return sum(s.size for s in self.symbols)


def quantize(update: dict[str, np.ndarray], scheme: str) -> Message:
    """Symbols of ``update`` under a named scheme, and the wire header that would carry them."""
    manifest = ParamManifest.from_arrays(update)
    comp = Compressor(CompressionSpec.from_dict({"scheme": scheme}), manifest)
    tensors = comp.quantize(update)
    body = len(comp.codec.encode([t.symbols for t in tensors]))
    header = len(encode_payload(tensors, manifest, comp.codec)) - body
    return Message([t.symbols for t in tensors], header)


def synthetic_sets(seed: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Sparse Laplacian updates: a 1M-parameter layer and cnn-shaped (38k) models."""
    rng = np.random.default_rng(seed)
    cnn_shapes = {"0.weight": (16, 1, 3, 3), "0.bias": (16,), "2.weight": (32, 16, 3, 3), "2.bias": (32,),
                  "7.weight": (64, 512), "7.bias": (64,), "9.weight": (10, 64), "9.bias": (10,)}

    def laplace(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        return {k: (rng.laplace(size=s) * 0.01).astype(np.float32) for k, s in shapes.items()}

    return {
        "1M layer": [laplace({"w": (1000, 1000)}) for _ in range(3)],
        "cnn 38k": [laplace(cnn_shapes) for _ in range(20)],
    }


def load_updates(path: Path) -> list[dict[str, np.ndarray]]:
    """One update dict per (round, client), in (round, client) order, from a run's ``updates/``
    folder (the file name gives the round) or from one ``.npz`` of ``r<round>/c<client>/<param>`` keys."""
    groups: dict[tuple[int, str], dict[str, np.ndarray]] = defaultdict(dict)
    files = sorted(path.glob("r*.npz")) if path.is_dir() else [path]
    for file in files:
        prefix = f"{file.stem}/" if path.is_dir() else ""
        with np.load(file, allow_pickle=False) as data:
            for key in data.files:
                match = re.fullmatch(r"r(\d+)/c([^/]+)/(.+)", prefix + key)
                if match is None:
                    raise SystemExit(f"{file}: key {key!r} is not r<round>/c<client>/<param>")
                groups[(int(match[1]), match[2])][match[3]] = data[key].astype(np.float32)
    return [groups[k] for k in sorted(groups)]


def measure(messages: list[Message], coder_list: list[Coder], repeats: int) -> dict[str, dict[str, float]]:
    """Totals per coder: bytes, entropy bits, median encode and decode seconds."""
    stats: dict[str, dict[str, float]] = {c.name: defaultdict(float) for c in coder_list}
    for msg in messages:
        shapes = [s.shape for s in msg.symbols]
        times: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for rep in range(repeats):
            order = coder_list[rep % len(coder_list):] + coder_list[: rep % len(coder_list)]
            for c in order:
                t0 = time.perf_counter()
                data = c.encode(msg.symbols)
                t1 = time.perf_counter()
                back = c.decode(data, shapes)
                t2 = time.perf_counter()
                times[c.name].append((t1 - t0, t2 - t1))
                if rep == 0:
                    if not all(np.array_equal(a, b) for a, b in zip(msg.symbols, back)):
                        raise SystemExit(f"{c.name}: round trip is not exact")
                    stats[c.name]["bytes"] += len(data)
        h0 = entropy_bits(msg.symbols)
        for c in coder_list:
            enc, dec = np.median(np.array(times[c.name]), axis=0)
            s = stats[c.name]
            s["enc_s"] += enc
            s["dec_s"] += dec
            s["h0_bits"] += h0
            s["params"] += msg.params
            s["header"] += msg.header_bytes
            s["messages"] += 1
    return stats


def table(title: str, stats: dict[str, dict[str, float]]) -> str:
    ref = stats.get("deepcabac", {}).get("bytes")
    first = next(iter(stats.values()))
    n, params = int(first["messages"]), int(first["params"])
    lines = [
        f"### {title}",
        "",
        f"{n} payloads, {params / n:,.0f} parameters each on average; zeroth-order entropy "
        f"{first['h0_bits'] / params:.4f} bits/param; wire header {first['header'] / n:.1f} bytes/payload "
        f"(ans/deepcabac/raw alike).",
        "",
        "| codec | bits/param | x H0 | x DeepCABAC | bytes/payload | enc MB/s | dec MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in stats.items():
        mb = 4 * s["params"] / 1e6
        lines.append(
            f"| {name} | {8 * s['bytes'] / s['params']:.4f} | {8 * s['bytes'] / s['h0_bits']:.3f} | "
            f"{s['bytes'] / ref:.3f} | {s['bytes'] / n:,.1f} | {mb / s['enc_s']:,.0f} | {mb / s['dec_s']:,.0f} |"
            if ref else
            f"| {name} | {8 * s['bytes'] / s['params']:.4f} | {8 * s['bytes'] / s['h0_bits']:.3f} | - | "
            f"{s['bytes'] / n:,.1f} | {mb / s['enc_s']:,.0f} | {mb / s['dec_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def summary_row(label: str, stats: dict[str, dict[str, float]]) -> str:
    """ans against DeepCABAC in one line: size ratio and speed-ups (>1: ans is faster)."""
    ans, ref = stats["ans"], stats.get("deepcabac")
    if ref is None:
        return f"| {label} | {8 * ans['bytes'] / ans['params']:.4f} | - | - | - |"
    return (f"| {label} | {8 * ans['bytes'] / ans['params']:.4f} | {ans['bytes'] / ref['bytes']:.3f} | "
            f"{ref['enc_s'] / ans['enc_s']:.2f}x | {ref['dec_s'] / ans['dec_s']:.2f}x |")


def environment() -> str:
    commit = source_commit()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    import constriction  # noqa: F401  (version via metadata)
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "absent"

    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, {cpu}, "
            f"{len(__import__('os').sched_getaffinity(0))} cores; python {platform.python_version()}, "
            f"numpy {np.__version__}, constriction {ver('constriction')}, nncodec {ver('nncodec')}, "
            f"zstandard {ver('zstandard')}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=Path, help="real client updates: a run's updates/ folder, or one npz "
                        "(r<round>/c<client>/<param>)")
    parser.add_argument("--updates-note", default="", help="where the updates come from (written to the results)")
    parser.add_argument("--schemes", nargs="+", default=REAL_SCHEMES, help="schemes that quantize the updates")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    coder_list = coders()
    datasets = {f"synthetic Laplacian, {name}": ups for name, ups in synthetic_sets(args.seed).items()}
    if args.updates is None or not args.updates.exists():
        print(f"no update corpus ({args.updates or 'give --updates PATH'}): synthetic set only", file=sys.stderr)
    else:
        datasets[f"real updates ({args.updates.name})"] = load_updates(args.updates)

    sections, summary = [], []
    for data_name, updates in datasets.items():
        for scheme in args.schemes:
            quantization = {k: v for k, v in SCHEMES[scheme].items() if k not in ("codec", "error_feedback")}
            described = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in quantization.items())
            title = f"{data_name}, quantized as scheme `{scheme}` ({described})"
            print(f"measuring {title} ...", file=sys.stderr)
            stats = measure([quantize(u, scheme) for u in updates], coder_list, args.repeats)
            sections.append(table(title, stats))
            summary.append(summary_row(f"{data_name}, `{scheme}`", stats))
            print(sections[-1])

    command = ["benchmarks/codec_bench.py", f"--repeats {args.repeats}", f"--seed {args.seed}"]
    if datasets.keys() - {f"synthetic Laplacian, {name}" for name in synthetic_sets(args.seed)}:
        command.insert(1, f"--updates {args.updates}")
    if args.schemes != REAL_SCHEMES:
        command.append("--schemes " + " ".join(args.schemes))
    note = f"\nReal-update corpus: {args.updates_note}\n" if args.updates_note else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Codec benchmark\n\n"
        f"Produced by `{' '.join(command)}` on {environment()}.\n"
        f"Medians of {args.repeats} interleaved repeats per payload, all codecs in the same run; "
        "throughput is float32 input bytes (4 per parameter) over the codec step alone "
        "(symbols <-> bytes). Each update is quantized on its own, without error feedback.\n"
        + note
        + "\n## Summary: ans against DeepCABAC\n\n"
        + "| data, quantization | ans bits/param | size vs DeepCABAC | encode speed vs DeepCABAC "
        + "| decode speed vs DeepCABAC |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(summary)
        + "\n\n## Per codec\n\n"
        + "\n".join(sections)
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
