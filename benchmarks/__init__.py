"""Benchmarks. A package so that a simulation's ServerApp can be ``benchmarks.stock_server_app:app``."""
