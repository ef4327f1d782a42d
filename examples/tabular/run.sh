#!/bin/sh
# Generate the sensor table and run fedcomp on it, one client per device.
# Needs fedcomp on PATH (e.g. `. .venv/bin/activate` in the repository root first).
set -e
cd "$(dirname "$0")"
"${PYTHON:-python}" make_data.py
"${FEDCOMP:-fedcomp}" run --config run.toml --out runs/tabular "$@"
