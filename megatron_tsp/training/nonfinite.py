"""Numerical faults: an iteration whose loss or gradients hold a NaN or Inf is not applied.

Megatron 0.19 offers two extremes: `--check-for-nan-in-loss-and-grad` stops the job at the first
NaN, and fp16's loss scaler skips overflowing steps without limit. A long run wants the middle:
skip the update, log and count it, and stop once `--max-consecutive-nonfinite-iterations` happen
in a row, before a diverged run burns the cluster.

The check runs inside the optimizer's `prepare_grads` (before clipping and before any parameter,
Adam moment or learning-rate step), so a skipped iteration goes down Megatron's own path for
a failed update: `train_step` counts it as skipped and `training_log` prints "number of skipped
iterations". The decision is reduced over all ranks, so every rank skips, or stops, together.
It costs one extra gradient-norm pass per iteration. fp16 overflows found by Megatron's loss
scaler keep their own handling and are not counted here (the scaler has then already shrunk the
scale; an iteration skipped here has counted as a good one for the scaler's growth).
"""

import math
import sys

import torch
from megatron.training import get_args, print_rank_0

from megatron_tsp.device import compute_device

_loss_nonfinite = None  # bool tensor: a local loss of this iteration was NaN/Inf (no host sync)


def note_loss(local_loss: torch.Tensor) -> torch.Tensor:
    """Record whether this micro-batch's loss is finite; returns the loss, poisoned with NaN at the
    iterations --debug-nonfinite-loss-iterations names (on the last rank only)."""
    global _loss_nonfinite
    if not torch.is_grad_enabled():  # evaluation: no update to guard
        return local_loss
    args = get_args()
    if (args.curr_iteration + 1 in (args.debug_nonfinite_loss_iterations or ())
            and torch.distributed.get_rank() == torch.distributed.get_world_size() - 1):
        local_loss = local_loss * float("nan")
    bad = ~torch.isfinite(local_loss.detach())
    _loss_nonfinite = bad if _loss_nonfinite is None else _loss_nonfinite | bad
    return local_loss


class _Guard:
    def __init__(self, optimizer, limit: int):
        self.prepare_grads = optimizer.prepare_grads
        self.get_grad_norm = optimizer.get_grad_norm
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def __call__(self) -> bool:
        """Megatron's prepare_grads, plus: is this iteration's update to be skipped?"""
        global _loss_nonfinite
        loss_nonfinite, _loss_nonfinite = _loss_nonfinite, None  # this iteration's, in any case
        if self.prepare_grads():
            return True
        grad_norm = self.get_grad_norm()
        grad_norm = None if grad_norm is None else float(grad_norm)  # a tensor with apex / TE
        device = compute_device()
        bad = torch.tensor([0 if grad_norm is None or math.isfinite(grad_norm) else 1],
                           dtype=torch.int32, device=device)
        if loss_nonfinite is not None:
            bad |= loss_nonfinite.to(device=device, dtype=torch.int32).reshape(1)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bad.item():
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.total += 1
        iteration = get_args().curr_iteration + 1
        print_rank_0(f" iteration {iteration}: non-finite loss or gradient (grad norm "
                     f"{grad_norm}): update skipped, {self.in_a_row} in a row, {self.total} in "
                     f"this run")
        if self.in_a_row >= self.limit:
            first = iteration - self.in_a_row + 1
            if torch.distributed.get_rank() == 0:
                print(f"pretrain_qwen3.py: error: iterations {first}-{iteration}: "
                      f"{self.in_a_row} in a row had a non-finite loss or gradient "
                      f"(--max-consecutive-nonfinite-iterations {self.limit}); stopping without "
                      f"saving. The parameters were last updated at iteration {first - 1}: "
                      f"restart from the last checkpoint (e.g. with a lower --lr).",
                      file=sys.stderr, flush=True)
            sys.exit(1)
        return True


def guard_optimizer(optimizer, limit: int) -> None:
    """Make `optimizer.step()` skip any iteration with a non-finite loss or gradient."""
    optimizer.prepare_grads = _Guard(optimizer, limit)


def install(args) -> None:
    """Guard the optimizer Megatron's `pretrain` builds (it has no hook for that)."""
    from megatron.training import training
    setup = training.setup_model_and_optimizer

    def setup_model_and_guarded_optimizer(*a, **kw):
        model, optimizer, scheduler = setup(*a, **kw)
        if optimizer is not None:  # None with --skip-train
            guard_optimizer(optimizer, args.max_consecutive_nonfinite_iterations)
        return model, optimizer, scheduler

    training.setup_model_and_optimizer = setup_model_and_guarded_optimizer
