"""The NaN/Inf guard on its own, with a stand-in for Megatron's optimizer on a real gloo group:
a non-finite loss alone skips the update, fp16's own overflow skip leaves no stale loss flag, and
the limit stops the job. (tests/test_nonfinite.py injects faults through pretrain_qwen3.py.)"""

import os
import types

import pytest
import torch

from tests.dist import run_distributed


class _Optimizer:
    """Megatron's optimizer as the guard sees it: prepare_grads (True: fp16 overflow) and the
    global gradient norm."""

    def __init__(self, outcomes):
        self.outcomes = iter(outcomes)

    def prepare_grads(self):
        self.overflow, self.norm = next(self.outcomes)
        return self.overflow

    def get_grad_norm(self):
        return self.norm


def _run(scenarios):
    """{name: [(skipped?, stopped?)] per iteration} for {name: (iterations per rank, limit)};
    an iteration is (this rank's loss, fp16 overflow, global gradient norm)."""
    from megatron_tsp.training import nonfinite
    torch.distributed.init_process_group("gloo")
    args = types.SimpleNamespace(curr_iteration=0, debug_nonfinite_loss_iterations=None)
    nonfinite.get_args = lambda: args  # Megatron's global args, which this test does not set up
    nonfinite.print_rank_0 = lambda message: None
    results = {}
    for name, (iterations_per_rank, limit) in scenarios.items():
        iterations = iterations_per_rank[int(os.environ["RANK"])]
        optimizer = _Optimizer([(overflow, norm) for _, overflow, norm in iterations])
        nonfinite.guard_optimizer(optimizer, limit)
        outcomes = results[name] = []
        for i, (loss, _, _) in enumerate(iterations):
            args.curr_iteration = i
            nonfinite.note_loss(torch.tensor(loss, requires_grad=True))
            try:
                outcomes.append((optimizer.prepare_grads(), False))
            except SystemExit as stop:
                outcomes.append((True, stop.code != 0))
                break
    return results


NAN, INF = float("nan"), float("inf")


def _limit_scenario(norm):
    return [[(1.0, False, norm), (1.0, False, 1.0), (1.0, False, norm), (1.0, False, norm),
             (1.0, False, norm), (1.0, False, 1.0)]], 3


# one process runs them all, one after the other
SINGLE_RANK = {
    "fp16": ([[(NAN, True, None), (1.0, False, 1.0), (1.0, False, NAN), (1.0, False, NAN)]], 2),
    "limit-nan": _limit_scenario(NAN),
    "limit-inf": _limit_scenario(INF),
}


@pytest.fixture(scope="module")
def single_rank():
    return run_distributed(_run, 1, SINGLE_RANK)[0]


def test_a_nonfinite_loss_alone_skips_the_update_on_every_rank():
    # rank 1's loss is NaN while every gradient norm is finite
    per_rank = run_distributed(_run, 2, {"loss": ([[(1.0, False, 1.0)], [(NAN, False, 1.0)]], 5)})
    assert [outcomes["loss"] for outcomes in per_rank] == [[(True, False)], [(True, False)]]


def test_an_fp16_overflow_leaves_no_stale_loss_flag_and_is_not_counted(single_rank):
    assert single_rank["fp16"] == [(True, False), (False, False), (True, False), (True, True)]


@pytest.mark.parametrize("name", ["limit-nan", "limit-inf"])
def test_the_limit_stops_after_that_many_in_a_row(single_rank, name):
    assert single_rank[name] == [(True, False), (False, False), (True, False), (True, False),
                                 (True, True)]
