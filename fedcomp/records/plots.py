"""Plots of accuracy against transmitted data (one run or several)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_mb(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                        title: str = "Test accuracy vs. transmitted data") -> Path:
    """Draw one line per label from ``(cumulative MB, accuracy)`` points and save a PNG."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (mb, acc) in curves.items():
        ax.plot(mb, acc, marker="o", markersize=3, label=label)
    ax.set_xlabel("cumulative transmitted data (MB, up + down payload)")
    ax.set_ylabel("test accuracy")
    if any(len(mb) and max(mb) > 0 for mb, _ in curves.values()):
        ax.set_xscale("symlog", linthresh=0.01)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
