"""TSP at D = 2 and 4 computes what one process computes: the loss and every gradient."""

import pytest
import torch

from tests.dist import run_distributed
from tests.tsp_harness import run_step_parity_configs, tiny_config

# kv groups relative to D: 8 > D (MHA), 4 (> 2, = 4), 2 (= 2, < 4), 1 (< D)
CONFIGS = [
    tiny_config(heads=8, groups=8, tied=False),
    tiny_config(heads=8, groups=4, tied=True),
    tiny_config(heads=8, groups=2, tied=False),
    tiny_config(heads=8, groups=1, tied=True),
]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def single_process():
    return run_distributed(run_step_parity_configs, 1, 1, CONFIGS)[0]


@pytest.mark.parametrize("tsp_size", [2, 4])
def test_loss_and_every_gradient_match_single_process(single_process, tsp_size):
    results = run_distributed(run_step_parity_configs, tsp_size, tsp_size, CONFIGS)[0]
    for cfg, ref, got in zip(CONFIGS, single_process, results):
        label = f"groups={cfg.num_query_groups} tied={cfg.tie_word_embeddings} D={tsp_size}"
        assert abs(got["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"]), label
        assert got["grads"].keys() == ref["grads"].keys()
        for name, expected in ref["grads"].items():
            actual = got["grads"][name]
            assert actual.shape == expected.shape, f"{label} {name}"
            assert expected.norm() > 0, f"{label} {name} has no gradient at all"
            assert _relative_error(actual, expected) < 1e-5, f"{label} {name}"
