"""The first run of the embedded demo under torchrun prints Megatron's own log and nothing else: no
warning about a condition that does not concern a TSP user (issue 13)."""

import re

import pytest

from tests.pretrain_runner import run_pretrain

pytestmark = pytest.mark.slow

# a distinctive fragment of each warning or stray line the first run used to print
NOT_THE_USERS_CONCERN = {
    "Transformer Engine's MoE version": "supports MoE experts",
    "Megatron's ModelConfig advice": "It is recommended to use a ModelConfig",
    "MiMo is experimental": "MimoModelConfig is experimental",
    "the embedded tokenizer's pad token": "pad token id in the tokenizer collides",
    "one_logger's internal link": "one_logger package is required",
    "torch's all_gather_into_tensor deprecation": "`torch.distributed.all_gather_into_tensor`",
    "pin_memory without an accelerator": "'pin_memory' argument is set as true",
    "CUDA graph scope deprecation": "full scope is deprecated",
    "the memory report's debug label": "compute_activation_memory",
}
# how the warnings module prints: "path/to/file.py:88: UserWarning: ..."
_PYTHON_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: .*$", re.M)


def test_first_run_prints_no_warning_that_is_not_the_users_concern(tmp_path):
    # a fresh cache: the first run tokenizes the embedded corpus too
    code, losses, output = run_pretrain(2, ["--tsp-size", "2", "--train-iters", "3"],
                                        tmp_path / "cache")
    assert code == 0, output[-5000:]
    found = {what: fragment for what, fragment in NOT_THE_USERS_CONCERN.items()
             if fragment in output}
    assert not found, f"{found}\n...\n{output[-5000:]}"
    assert not _PYTHON_WARNING.findall(output), _PYTHON_WARNING.findall(output)
    # Megatron's own log is kept as Megatron prints it
    assert "------------------------ arguments ------------------------" in output
    assert "-------------------- end of arguments ---------------------" in output
    assert "iteration        1/       3 |" in output
    assert 1 in losses, output[-5000:]
