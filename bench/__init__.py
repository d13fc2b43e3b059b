"""Benchmark harness: real-size random-weight Qwen pipelines, measured per phase (see bench/README.md)."""
