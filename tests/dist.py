"""Run a test body on D real processes over gloo and collect what each rank returns."""

from megatron_tsp.spawn import run_local_ranks


def run_distributed(fn, world_size: int, *args, timeout: float = 600.0):
    """Call fn(*args) on world_size spawned ranks; return the list of their results by rank."""
    return run_local_ranks(fn, world_size, *args, timeout_s=timeout)
