"""The fake-GPU harness: one process plays rank r of D on fake "cuda" tensors, with no GPU.

torch's FakeTensorMode gives tensors shapes, dtypes and devices but no memory and no compute;
torch's fake process group (backend "fake") returns every collective at once. Together they run
the code a GPU cluster runs, at its real scale, in seconds. What the harness stands in for, and
why (each is the least that lets the GPU code path run on a CPU-only torch):
- a CUDA device guard and CUDA hooks (tests/fake_cuda.cpp, loaded by tests/fake_gpu_step.py
  before torch): autograd's engine asks them for streams;
- `dist.new_group` ignores the backend Megatron asks for (gloo for some groups): one fake group;
- `torch.cuda.get_device_capability`: asked by collectives on CUDA tensors;
- SDPA's kernel choice, which a CPU-only torch cannot make for CUDA: the flash kernel for CUDA
  bf16/fp16 inputs (what a GPU picks for the zigzag chunks; scripts/gpu_check.sh checks it on a
  real one); torch's CausalBias, which holds only two lengths, is made outside the fake mode (a
  tensor subclass cannot be made in it).

`StepAudit` watches every operator of a step: any tensor off the device, any operator that
makes the device wait for the host, and any tensor shaped like attention scores over the
sequence (two dims that are multiples of the chunk length c = S/2D) fail the check. The last
check is meant for long context, where c exceeds the model's own dims (at 128K tokens and
D = 8, c = 8192); at short lengths model dims can be multiples of c.
"""

from typing import List, Optional

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

# operators whose result the host must read before going on (a GPU pipeline stall)
HOST_SYNC_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select",
                 "aten.is_nonzero", "aten.item", "aten.unique", "aten._unique2",
                 "aten.masked_scatter"}


def start_fake_rank(rank: int, world_size: int, tsp_size: int) -> None:
    """torch.distributed with the fake backend as `rank` of `world_size`, and Megatron's model
    parallel groups with a TSP (tensor-parallel slot) size of `tsp_size`."""
    from unittest import mock

    from torch.testing._internal.distributed.fake_pg import FakeStore

    from megatron_tsp import parallel_state as ps

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    real_new_group = dist.new_group

    def new_group(*args, **kwargs):
        kwargs.pop("backend", None)
        kwargs.pop("pg_options", None)
        return real_new_group(*args, **kwargs)

    torch.cuda.get_device_capability = lambda *args, **kwargs: (9, 0)
    with mock.patch.object(dist, "new_group", new_group):
        ps.initialize_tsp(tsp_size)


def use_gpu_attention_kernels() -> None:
    """SDPA as a GPU runs the zigzag chunks: the flash kernel, causal (lower-right for a chunk
    against a longer key prefix). A CPU-only torch has no CUDA kernel choice to make, so its SDPA
    would fall back to the math path and build the c x c mask: the choice is made here instead."""
    import torch.nn.functional as F
    from torch.nn.attention import bias

    import megatron_tsp.layers.chunk_attention as chunk_attention

    real_sdpa, real_causal_lower_right = F.scaled_dot_product_attention, bias.causal_lower_right

    def flash_eligible(q) -> bool:
        return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256

    def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                     scale=None, enable_gqa=False):
        if attn_mask is None and flash_eligible(q):
            return torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, dropout_p, is_causal, False, scale=scale)[0]
        if isinstance(attn_mask, bias.CausalBias):  # its own dispatch, as SDPA would call it
            return attn_mask._dispatch(q, k, v, attn_mask, dropout_p, is_causal, scale,
                                       enable_gqa)
        return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)

    def causal_lower_right(*lengths):
        with _disable_current_modes():
            return real_causal_lower_right(*lengths)

    F.scaled_dot_product_attention = scaled_dot_product_attention
    chunk_attention.causal_lower_right = causal_lower_right
    bias.can_use_flash_attention = lambda params, debug=False: flash_eligible(params.query)


class StepAudit(TorchDispatchMode):
    """Records what a GPU step must never do (see the module docstring)."""

    def __init__(self, device: torch.device, chunk: int):
        super().__init__()
        self.device, self.chunk = torch.device(device), chunk
        self.off_device: List[str] = []
        self.host_syncs: List[str] = []
        self.score_shaped: List[str] = []
        self.largest = (0, "")

    def _score_shaped(self, shape) -> bool:
        long_dims = [d for d in shape if d >= self.chunk and d % self.chunk == 0]
        return len(long_dims) >= 2

    def _check(self, op: str, t: torch.Tensor, role: str) -> None:
        if t.device.type != self.device.type and t.dim() > 0:
            self.off_device.append(f"{op} {role} on {t.device} {tuple(t.shape)}")
        if self._score_shaped(t.shape):
            self.score_shaped.append(f"{op} {role} {tuple(t.shape)}")
        if t.numel() > self.largest[0]:
            self.largest = (t.numel(), f"{op} {tuple(t.shape)} {t.dtype}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = str(func.overloadpacket)
        if op in HOST_SYNC_OPS:
            self.host_syncs.append(op)
        out = func(*args, **kwargs)
        for role, value in [("input", a) for a in args] + [("input", v) for v in kwargs.values()]:
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, torch.Tensor):
                    self._check(op, t, role)
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor):
                self._check(op, t, "output")
        if op in ("aten._to_copy", "aten.copy_") and _crosses_devices(args, kwargs, out):
            self.host_syncs.append(f"{op} between devices")
        return out

    def report(self, limit: int = 5) -> dict:
        return {"off_device": self.off_device[:limit], "host_syncs": self.host_syncs[:limit],
                "score_shaped": self.score_shaped[:limit], "largest": self.largest[1]}


def _crosses_devices(args, kwargs, out) -> bool:
    tensors = [t for t in list(args) + [out] if isinstance(t, torch.Tensor) and t.dim() > 0]
    return len({t.device.type for t in tensors}) > 1


def peak_bytes(tracker, device: Optional[torch.device] = None) -> int:
    """The peak total bytes a torch MemTracker saw on `device` (fake storage counts as real)."""
    snapshot = tracker.get_tracker_snapshot("peak")
    device = device or next(iter(snapshot))
    return snapshot[device]["Total"]
