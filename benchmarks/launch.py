"""Start D gloo ranks (megatron_tsp.spawn) for one scheme and collect what each returns.

With an emulated network, rank r first joins its own network namespace (setns) and talks to the
others over the shaped links of benchmarks/netns.py; otherwise every rank uses loopback.
"""

import ctypes
import os
from functools import partial
from typing import Callable, Optional

from benchmarks.netns import EmulatedNetwork
from megatron_tsp.spawn import run_local_ranks

_CLONE_NEWNET = 0x40000000


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


def _rank_setup(namespaces, addresses, rank: int) -> None:
    if namespaces:
        join_network_namespace(namespaces[rank])
        os.environ.update(MASTER_ADDR=addresses[0],
                          GLOO_SOCKET_IFNAME=EmulatedNetwork.RANK_IFNAME)
    import torch
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        from benchmarks import counting_allocator
        counting_allocator.install()  # before the rank allocates anything it measures


def run_ranks(fn: Callable, world_size: int, *args, network: Optional[EmulatedNetwork] = None,
              timeout_s: float = 3600.0) -> list:
    """fn(*args) on world_size spawned ranks; their return values by rank."""
    namespaces = [network.rank_namespace(r) for r in range(world_size)] if network else []
    addresses = [network.rank_address(r) for r in range(world_size)] if network else []
    return run_local_ranks(fn, world_size, *args, timeout_s=timeout_s,
                           rank_setup=partial(_rank_setup, namespaces, addresses))
