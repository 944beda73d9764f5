"""Benchmarks of issue #2 (section 7): ingest throughput, memory and forwarding time.

``make bench`` runs ``bench/run_all.py``; see ``bench/RESULTS.md`` for the figures.
"""
