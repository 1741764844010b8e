"""Pretrain a Qwen3 dense model with Tensor and Sequence Parallelism through Megatron's loop.

    torchrun --nproc-per-node 2 pretrain_qwen3.py --tsp-size 2            # CPU: the embedded demo
    torchrun --nproc-per-node 8 pretrain_qwen3.py --tsp-size 8 --model-size 8b --seq-length 131072 \
        --bf16 --data-path ... --tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR ...

Megatron-LM's flags keep their names and meaning; --tsp-size D and --model-size are added. The
`__main__` guard matters: Megatron's checkpoint writer starts a spawn-mode process that
re-imports this file.
"""

import os
import sys

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")

import megatron_tsp  # noqa: E402,F401  (megatron-core adaptations before any megatron import)
from megatron.core.enums import ModelType  # noqa: E402
from megatron.training import pretrain  # noqa: E402
from megatron.training.argument_utils import pretrain_cfg_container_from_args  # noqa: E402
from megatron.training.arguments import parse_args, validate_args  # noqa: E402
from megatron.training.global_vars import set_global_variables  # noqa: E402

from megatron_tsp.training.arguments import add_tsp_arguments, prepare_args  # noqa: E402
from megatron_tsp.training.data import (  # noqa: E402
    prepare_embedded_data, train_valid_test_datasets_provider)
from megatron_tsp.training import flag_errors, nonfinite  # noqa: E402
from megatron_tsp.training.launch_checks import check_required  # noqa: E402
from megatron_tsp.training.memory_check import check_launch_memory  # noqa: E402
from megatron_tsp.training.step import forward_step, model_provider  # noqa: E402
from megatron_tsp.training.orphans import exit_with_parent  # noqa: E402

if __name__ == "__mp_main__":  # a spawn-mode helper of a rank imports this file as __mp_main__
    exit_with_parent()


def _usage_error(message: str) -> None:
    print(f"pretrain_qwen3.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    sys.argv[1:] = argv
    args = parse_args(add_tsp_arguments)
    try:
        prepare_args(args, argv)
        check_required(args)
        check_launch_memory(args)  # before the data, Megatron's checks and the model
    except ValueError as error:
        _usage_error(str(error))
    prepare_embedded_data(args)
    # Megatron's own checks before pretrain() starts the process groups raise bare asserts
    # that name attributes, not flags
    try:
        validate_args(args, {})
        set_global_variables(args)
        config = pretrain_cfg_container_from_args(args, None)
    except flag_errors.TRANSLATED as error:
        _usage_error(flag_errors.describe(error, args, argv, add_tsp_arguments))
    nonfinite.install(args)
    pretrain(config, train_valid_test_datasets_provider, ModelType.encoder_or_decoder,
             forward_step, model_provider=model_provider)


if __name__ == "__main__":
    main()
