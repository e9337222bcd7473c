"""The evaluate flow: benchmarks x models -> splits -> tasks -> records (and their sidecars) -> reports."""
