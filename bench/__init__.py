"""Benchmarks: scripts that time our paths against the reference paths in the same run."""
