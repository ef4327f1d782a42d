"""Write a small sensor table: activity recognition from 12 features, five devices.

Each row is one time window of a wearable's readings: 12 numeric features, the `device`
that recorded it and the `activity` (sit, walk, run). Each device has its own calibration
offset and its own mix of activities, so partitioning by device gives clients that differ
the way real ones do. Writes examples/tabular/data/sensors.csv (about 1500 rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv

ACTIVITIES = ("sit", "walk", "run")
DEVICES = 5
FEATURES = 12


def make_table(rows_per_device: int = 300, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (len(ACTIVITIES), FEATURES))  # what each activity looks like
    columns: dict[str, list] = {f"f{i}": [] for i in range(FEATURES)}
    columns["device"], columns["activity"] = [], []
    for device in range(DEVICES):
        offset = rng.normal(0, 0.5, FEATURES)  # this device's calibration
        mix = rng.dirichlet(np.full(len(ACTIVITIES), 2.0))  # how often its wearer does what
        activity = rng.choice(len(ACTIVITIES), rows_per_device, p=mix)
        features = centres[activity] + offset + rng.normal(0, 1.0, (rows_per_device, FEATURES))
        for i in range(FEATURES):
            columns[f"f{i}"].extend(np.round(features[:, i], 4).tolist())
        columns["device"].extend([f"device-{device}"] * rows_per_device)
        columns["activity"].extend(ACTIVITIES[a] for a in activity)
    return pa.table(columns)


def main() -> None:
    out = Path(__file__).resolve().parent / "data" / "sensors.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = make_table()
    pyarrow.csv.write_csv(table, out)
    print(f"wrote {out} ({table.num_rows} rows, columns: {', '.join(table.column_names)})")


if __name__ == "__main__":
    main()
