"""FantastIC4 emulator benchmark: emulator speed against float32 torch, per-format costs, float vs 4-bit accuracy.

Three tables, one run, written to ``benchmarks/results/fantastic4.md``:

1. Speed. Emulated inferences per second of the bit-exact integer engine against the same
   network's float32 torch inference (``torch.no_grad``, ``nn.Sequential`` of Linear/ReLU),
   both on one thread and on the same batches of ``--batch`` inputs, median of ``--repeats``
   interleaved timings. The emulator's time includes turning the input features into
   integers. Networks: the default ``mlp`` trained on digits, and an MLP the size of the
   paper's Google Speech Commands networks (`cost.REFERENCE_LAYERS`, 490-512-512-512-12)
   with random He-initialised weights and random inputs, compiled at two ECQ strengths.
2. Per-format cost of every network, every layer forced into one format and the cheapest
   per layer: operations, cycles, energy on the FPGA and ASIC models, bytes.
3. Accuracy on digits: float against 4-bit (ECQ at several gamma, with and without a
   2-epoch quantization-aware fine-tune), for ``mlp`` and for the fully-connected head of
   ``cnn`` (``edge.head``).

    .venv/bin/python benchmarks/fantastic4_bench.py
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fedcomp.data import load_dataset
from fedcomp.fantastic4.compile import CompiledNet, compile_model
from fedcomp.fantastic4.cost import PROFILES, REFERENCE_LAYERS, network_cost
from fedcomp.fantastic4.formats import FORMATS
from fedcomp.models import build_model
from fedcomp.models.small import he_initialised
from fedcomp.records.provenance import source_commit
from fedcomp.local.training import TrainSettings, evaluate, train

RESULTS = Path(__file__).parent / "results" / "fantastic4.md"


def gsc_mlp() -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for n, m in zip(REFERENCE_LAYERS[:-1], REFERENCE_LAYERS[1:]):
        layers += [nn.Linear(n, m), nn.ReLU()]
    return he_initialised(nn.Sequential(*layers[:-1]))


def median_rate(fn, batch: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def speed(name: str, model: nn.Module, compiled: CompiledNet, x: torch.Tensor, repeats: int) -> dict:
    model.eval()
    with torch.no_grad():
        model(x), compiled.logits(x)  # warm up

        def torch_run():
            with torch.no_grad():
                model(x)

        rates = {"torch": [], "f4": []}
        for _ in range(3):  # interleave, so both see the same machine load
            rates["torch"].append(median_rate(torch_run, len(x), repeats))
            rates["f4"].append(median_rate(lambda: compiled.logits(x), len(x), repeats))
    torch_rate, f4_rate = float(np.median(rates["torch"])), float(np.median(rates["f4"]))
    zeros = sum(int((layer.weights == 0).sum()) for layer in compiled.layers)
    weights = sum(layer.weights.size for layer in compiled.layers)
    return {"name": name, "torch": torch_rate, "f4": f4_rate, "ratio": f4_rate / torch_rate,
            "sparsity": zeros / weights, "weights": weights}


def format_rows(name: str, compiled: CompiledNet) -> list[str]:
    rows = []
    for fmt in [*FORMATS, "cheapest"]:
        fpga = network_cost(compiled.layers, compiled.act_bits, PROFILES["fpga"], fmt)
        asic = network_cost(compiled.layers, compiled.act_bits, PROFILES["asic"], fmt)
        adds = sum(layer.ops.adds for layer in fpga.layers)
        muls = sum(layer.ops.muls for layer in fpga.layers)
        reads = sum(layer.ops.read_bits for layer in fpga.layers)
        chosen = "/".join(layer.format for layer in fpga.layers) if fmt == "cheapest" else fmt
        rows.append(f"| {name} | {chosen} | {adds} | {muls} | {reads} | {fpga.cycles} | "
                    f"{fpga.latency_s * 1e6:.3f} | {fpga.energy_j * 1e9:.2f} | {asic.energy_j * 1e9:.3f} | "
                    f"{fpga.model_bytes} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    digits = load_dataset("digits", seed=0)
    train_loader = DataLoader(digits.train, batch_size=32, shuffle=True)
    test = DataLoader(digits.test, batch_size=512)
    calibration = torch.stack([digits.train[i][0] for i in range(256)])
    trained = {}
    for name in ("mlp", "cnn"):
        torch.manual_seed(0)
        trained[name] = build_model(name, digits.num_classes, digits.input_shape)
        train(trained[name], train_loader, TrainSettings(epochs=10, lr=0.05))

    # 1. speed
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(digits.test), args.batch)
    digits_x = torch.stack([digits.test[int(i)][0] for i in idx])
    torch.manual_seed(0)
    gsc = gsc_mlp()
    gsc_x = torch.randn(args.batch, REFERENCE_LAYERS[0])
    compiled = {
        "mlp (digits, trained), gamma 0.1": (trained["mlp"], compile_model(trained["mlp"], calibration), digits_x),
        "GSC-size MLP (random), gamma 0.1": (gsc, compile_model(gsc, gsc_x[:256]), gsc_x),
        "GSC-size MLP (random), gamma 0.3": (gsc, compile_model(gsc, gsc_x[:256], gamma=0.3), gsc_x),
    }
    speeds = [speed(name, model, net, x, args.repeats) for name, (model, net, x) in compiled.items()]

    # 3. accuracy
    accuracy_rows = []
    for name, head in (("mlp", False), ("cnn (FC head on device)", True)):
        model = trained[name.split()[0]]
        float_acc = evaluate(model, test)["accuracy"]
        for gamma in (0.0, 0.1, 0.3):
            plain = compile_model(model, calibration, gamma=gamma, head=head)
            torch.manual_seed(0)
            qat = compile_model(model, calibration, gamma=gamma, head=head, finetune_loader=train_loader,
                                finetune_epochs=2)
            sparsity = np.mean([float((layer.weights == 0).mean()) for layer in plain.layers])
            accuracy_rows.append(f"| {name} | {float_acc:.4f} | {gamma} | {sparsity:.2f} | "
                                 f"{plain.accuracy(test):.4f} | {qat.accuracy(test):.4f} |")

    lines = [
        "# FantastIC4 emulator benchmark",
        "",
        f"Commit `{source_commit()}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, one thread for both sides, batch {args.batch}, median of 3 x {args.repeats} "
        f"interleaved timings. Written by `benchmarks/fantastic4_bench.py`.",
        "",
        "## Speed: emulated inferences per second against float32 torch",
        "",
        "The emulator is bit-exact integer inference (each row as the sum over its distinct values of value x sum "
        "of the inputs carrying it, then requantization); torch runs the float32 model. Target: ratio >= 0.5.",
        "",
        "| network | weights | zeros | torch float32 inf/s | emulator inf/s | emulator / torch |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {s['name']} | {s['weights']} | {s['sparsity']:.2f} | {s['torch']:,.0f} | {s['f4']:,.0f} | "
          f"{s['ratio']:.2f} |" for s in speeds],
        "",
        "## Cost per inference, by compact format",
        "",
        "Every layer in one format, or the cheapest per layer by energy on the FPGA model (layer formats listed). "
        "Adds include the input accumulations, the shift-adds of the value products and their accumulation; muls "
        "are the requantization multiplies. Cost model: `fedcomp/fantastic4/cost.py` (calibrated to 2.45 TOPS at "
        "3.6 W on the FPGA and 20.17 TOPS/W on the ASIC; see the README for what is assumed).",
        "",
        "| network | format | adds | muls | read bits | cycles | FPGA latency (us) | FPGA energy (nJ) | "
        "ASIC energy (nJ) | bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (_, net, _) in compiled.items():
        lines += format_rows(name, net)
    lines += [
        "",
        "## Accuracy on digits: float against 4-bit on the emulator",
        "",
        "Trained centrally for 10 epochs (seed 0); 8-bit activations, calibrated on 256 training examples; "
        "QAT = 2 epochs of quantization-aware fine-tuning on the training set. Zeros: mean fraction of zero "
        "weights per device layer.",
        "",
        "| model | float | ECQ gamma | zeros | 4-bit | 4-bit + QAT |",
        "|---|---:|---:|---:|---:|---:|",
        *accuracy_rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
