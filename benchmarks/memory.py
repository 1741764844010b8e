"""Peak memory of one training step on one rank, and how it was measured.

GPU: torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats().

CPU: torch's CPU allocator keeps no byte counters, so every rank installs a counting allocator
first thing (benchmarks/counting_allocator.cpp): each CPU tensor allocation and free, on any
thread (gloo's worker threads included), updates a live-bytes counter and its high-water mark.
The peak of a step is the high-water mark after resetting it to the live bytes at the step's
start, exactly as CUDA's allocator statistics do. It counts every tensor byte: parameters,
gradients, optimizer state, activations kept for backward, transient buffers (visiting weight
shards, gathered keys/values, gloo's staging copies). Not counted, as on GPU: allocator slack,
gloo's socket buffers, Python objects. A process RSS sampled every 5 ms is reported beside it as
a sanity check only: glibc keeps freed pages, so RSS overstates live bytes and never shrinks.
"""

import threading
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

import psutil
import torch

from benchmarks import counting_allocator

CPU_METHOD = ("counting CPU allocator (benchmarks/counting_allocator.cpp): live tensor bytes on "
              "every thread; peak = high-water mark over the step")
GPU_METHOD = "torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats"


@dataclass
class MemoryReport:
    """Bytes, per rank. marks: live bytes at each `PeakMemory.mark(name)`."""

    method: str
    peak_bytes: int
    live_at_start_bytes: int
    rss_start_bytes: int
    rss_peak_bytes: int
    marks: Dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class _RssSampler(threading.Thread):
    def __init__(self, period_s: float = 0.005):
        super().__init__(daemon=True)
        self.process, self.period_s = psutil.Process(), period_s
        self.peak = self.process.memory_info().rss
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.period_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def _live_bytes(on_gpu: bool) -> int:
    return torch.cuda.memory_allocated() if on_gpu else counting_allocator.live_bytes()


class PeakMemory:
    """Context manager around one step; `report` is filled on exit. On CPU the counting
    allocator must have been installed before the measured tensors were allocated."""

    def __init__(self):
        self.on_gpu = torch.cuda.is_available()
        self.report: Optional[MemoryReport] = None
        self._marks: Dict[str, int] = {}

    def __enter__(self) -> "PeakMemory":
        if self.on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            counting_allocator.reset_peak()
        self._start = _live_bytes(self.on_gpu)
        self._rss_start = psutil.Process().memory_info().rss
        self._sampler = _RssSampler()
        self._sampler.start()
        return self

    def mark(self, name: str) -> None:
        """Record the live bytes now (e.g. at the end of the forward: the kept activations)."""
        self._marks[name] = _live_bytes(self.on_gpu)

    def __exit__(self, *exc) -> None:
        rss_peak = self._sampler.stop()
        if self.on_gpu:
            torch.cuda.synchronize()
            peak, method = torch.cuda.max_memory_allocated(), GPU_METHOD
        else:
            peak, method = counting_allocator.peak_bytes(), CPU_METHOD
        self.report = MemoryReport(method, peak, self._start, self._rss_start, rss_peak,
                                   dict(self._marks))
