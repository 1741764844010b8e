"""What one rank measures for one scheme, at each sequence length (runs inside a spawned rank).

Per length: one unmeasured warm-up step (the first creates Adam's state; each resizes the buffers
that depend on the sequence length, e.g. Megatron's global buffer, as a real run has done after
its first step), then `measured_steps` steps, each between barriers, each timed and measured for
peak memory (benchmarks.memory.PeakMemory); the transfer counters (megatron_tsp.comm: bytes sent
and received by kind) and the memory are those of the last one; the seconds spent waiting on
each kind of transfer (exposed communication) are kept for every measured step.
"""

import time
from typing import Dict, List

import torch
import torch.distributed as dist

from megatron_tsp import comm
from megatron_tsp.config import Qwen3Config
from megatron_tsp.device import compute_device

from benchmarks.memory import PeakMemory
from benchmarks.schemes import SchemeRank, make_batch


def _now() -> float:
    """Wall time after the device has finished what was queued."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def matmul_gflops(size: int = 512, repeats: int = 8) -> float:
    """This rank's fp32 matmul speed while the other ranks do the same (compute per byte)."""
    a, b = (torch.randn(size, size, device=compute_device()) for _ in range(2))
    a @ b
    dist.barrier()
    start = _now()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (_now() - start) / 1e9


def _measured_step(run: SchemeRank, batch) -> Dict:
    comm.reset_transfer_counters()
    comm.record_timeline()
    dist.barrier()
    start = _now()
    with PeakMemory() as memory:
        loss = run.step(batch, memory)
    return {"loss": loss, "time_s": _now() - start, "memory": memory.report.as_dict(),
            "transfers": comm.transfer_counters(), "exposed_s": comm.exposed_communication(),
            "timeline": comm.take_timeline()}


def measure_scheme(scheme: str, config: dict, group_size: int, seq_lengths: List[int],
                   micro_batch_size: int, seed: int, measured_steps: int) -> Dict:
    """Rank body: build the scheme, then measure every length in the order given."""
    cfg = Qwen3Config(**config)
    run = SchemeRank(scheme, cfg, group_size, seed)
    try:
        gflops = matmul_gflops()
        per_length = []
        for seq_length in seq_lengths:
            batch = make_batch(cfg.vocab_size, micro_batch_size, seq_length, seed)
            warm_up_loss = run.step(batch)
            steps = [_measured_step(run, batch) for _ in range(measured_steps)]
            per_length.append({
                "seq_length": seq_length,
                "loss": warm_up_loss,
                "step_time_s": [s["time_s"] for s in steps],
                "memory": steps[-1]["memory"],
                "transfers": steps[-1]["transfers"],
                "exposed_s": [s["exposed_s"] for s in steps],
                "timelines": [s["timeline"] for s in steps],
                **run.model_state_bytes(),
            })
        return {"rank": dist.get_rank(), "matmul_gflops": gflops, "lengths": per_length}
    finally:
        run.close()



def matmul_rate() -> float:
    """Rank body: this rank's matmul GFLOP/s while every other rank measures its own (the
    emulated links are set from it)."""
    from megatron_tsp import parallel_state as ps
    ps.initialize_tsp(1)
    try:
        return matmul_gflops()
    finally:
        ps.destroy_tsp()
