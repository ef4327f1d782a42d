#!/bin/sh
# Generate four clinics' image folders and run fedcomp with one client per clinic.
# Needs fedcomp on PATH (e.g. `. .venv/bin/activate` in the repository root first).
set -e
cd "$(dirname "$0")"
"${PYTHON:-python}" make_data.py
"${FEDCOMP:-fedcomp}" run --config run.toml --out runs/client_images "$@"
