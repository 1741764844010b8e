"""Untrusted checkpoint files never execute code when they are read.

torch/distributed/checkpoint/default_planner.py DefaultLoadPlanner.load_bytes unpickles every
non-tensor entry of a checkpoint (Megatron's common state: args, iteration, optimizer and RNG
metadata) with torch.load(weights_only=False): a crafted checkpoint could run arbitrary code on
--load. megatron-core's own MCoreLoadPlanner inherits it. Here it unpickles with
weights_only=True, which admits tensors, containers and the classes megatron-core registers as
safe (megatron/core/safe_globals.py: argparse.Namespace, its enums, ...) and refuses the rest.
Applied everywhere: it is not CPU-specific.
"""

import torch
from torch.distributed.checkpoint import default_planner

_applied = False


def _load_bytes_weights_only(self, read_item, value) -> None:
    obj = torch.load(value, weights_only=True)
    if self.flatten_state_dict:
        default_planner.set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
    else:
        self.state_dict[read_item.dest_index.fqn] = obj


def apply_safe_loading() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    import megatron.core  # noqa: F401  (registers megatron-core's safe globals)
    default_planner.DefaultLoadPlanner.load_bytes = _load_bytes_weights_only
