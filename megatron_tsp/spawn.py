"""Run a function on D local processes (one thread each) that form a gloo group, and collect
what each returns: the launcher of the distributed tests and of the CPU benchmarks.

The ranks are forked from multiprocessing's fork server, which imports megatron_tsp (torch and
megatron-core with it) once per session: a spawned process spent seconds on those imports
before it ran a line of the function. Each rank gets the caller's environment as it is now, plus
torchrun's (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK), and calls `rank_setup(rank)` first,
if given, then `fn(*args)`. Results travel as plain pickles, which copy tensor data (the queue's
own pickler would pass shared-memory handles that die with the rank).
"""

import os
import pickle
import socket
import traceback
from typing import Callable, Optional

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world_size, port, environment, rank_setup, fn, args, queue):
    os.environ.clear()  # the fork server's environment is the one it started with
    os.environ.update(environment, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        if rank_setup is not None:  # first: e.g. a network namespace before any thread starts
            rank_setup(rank)
        import torch
        torch.set_num_threads(1)  # D ranks share the machine's cores
        queue.put((rank, "ok", pickle.dumps(fn(*args))))
    except BaseException:  # reported to the parent, which raises it with the traceback
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local_ranks(fn: Callable, world_size: int, *args,
                    rank_setup: Optional[Callable[[int], None]] = None,
                    timeout_s: float = 600.0) -> list:
    """fn(*args) on world_size forked ranks; their return values by rank. The first rank to
    fail raises RuntimeError with its traceback, and the other ranks are stopped."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["megatron_tsp"])
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main,
                         args=(r, world_size, port, dict(os.environ), rank_setup, fn, args,
                               queue))
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout_s)
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
                break
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [results[r] for r in range(world_size)]
