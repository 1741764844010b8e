"""Benchmarks: TSP against TP, TP+SP, context parallel and one process (compare_parallelism)."""
