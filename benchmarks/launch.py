"""Start D gloo ranks (spawned processes) for one scheme and collect what each returns.

With an emulated network, rank r first joins its own network namespace (setns) and talks to the
others over the shaped links of benchmarks/netns.py; otherwise every rank uses loopback.
"""

import ctypes
import os
import socket
import traceback
from typing import Callable, Optional

import torch.multiprocessing as mp

from benchmarks.netns import EmulatedNetwork

_CLONE_NEWNET = 0x40000000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_network_namespace(name: str) -> None:
    """Move this process's (only) thread into network namespace `name` (Python 3.11 has no
    os.setns). Threads started later, gloo's included, inherit it."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _rank_main(rank, world_size, port, namespaces, addresses, fn, args, queue):
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
               WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    if namespaces:
        join_network_namespace(namespaces[rank])
        env.update(MASTER_ADDR=addresses[0], GLOO_SOCKET_IFNAME=EmulatedNetwork.RANK_IFNAME)
    os.environ.update(env)
    import torch
    torch.set_num_threads(1)  # D ranks share the machine's cores
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        from benchmarks import counting_allocator
        counting_allocator.install()  # before the rank allocates anything it measures
    try:
        queue.put((rank, "ok", fn(*args)))
    except BaseException:  # reported to the parent, which raises it with the traceback
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable, world_size: int, *args, network: Optional[EmulatedNetwork] = None,
              timeout_s: float = 3600.0) -> list:
    """fn(*args) on world_size spawned ranks; their return values by rank."""
    namespaces = [network.rank_namespace(r) for r in range(world_size)] if network else []
    addresses = [network.rank_address(r) for r in range(world_size)] if network else []
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main,
                         args=(r, world_size, port, namespaces, addresses, fn, args, queue))
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
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [results[r] for r in range(world_size)]
