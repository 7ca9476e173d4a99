"""Benchmarks: ``python -m bench.intake`` (later ``eventdesk bench intake``)."""
