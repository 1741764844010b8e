"""A minimal pretrain_gpt-style entry point: Megatron's own training loop on a plain GPTModel.

Run with torchrun, e.g. (CPU, two gloo ranks)::

    CUDA_DEVICE_MAX_CONNECTIONS=1 torchrun --nproc-per-node 2 tests/mcore_pretrain_gpt.py \\
        --distributed-backend gloo --transformer-impl local --use-cpu-initialization \\
        --no-gradient-accumulation-fusion --no-persist-layer-norm --no-masked-softmax-fusion \\
        --no-bias-gelu-fusion --no-bias-dropout-fusion \\
        --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 \\
        --max-position-embeddings 64 --micro-batch-size 2 --global-batch-size 4 \\
        --train-iters 6 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer --vocab-size 256

The megatron-core 0.19.2 flow: ``parse_and_validate_args`` -> a ``PretrainConfigContainer`` from
the args -> ``pretrain(cfg, datasets_provider, model_type, forward_step, model_provider=...)``.
The model is megatron-core's GPTModel with the local (no TE, no apex) layer spec, built from the
TransformerConfig megatron derives from the args; pipeline stages get pre/post_process from
``get_model``. The ``__main__`` guard is required: checkpoint saving starts a spawn-mode
multiprocessing manager, which re-imports this file (so the imports sit under it too).
"""

from __future__ import annotations

import os
import sys
import warnings
from functools import partial

if __name__ == "__main__":
    # Only the torchrun rank itself imports Megatron. The first checkpoint save starts a
    # spawn-mode multiprocessing Manager whose process re-imports this file (as __mp_main__):
    # with nothing heavy at module level it starts in a fraction of a second instead of ~3 s.
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import megatron_tsp  # noqa: F401  (applies the import and CPU adaptations first)
    from megatron_tsp.device import compute_device

    import torch
    from megatron.core import mpu
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
    from megatron.core.enums import ModelType
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
    from megatron.core.utils import get_attr_wrapped_model, get_batch_on_this_tp_rank
    from megatron.training import get_args, get_timers, pretrain, print_rank_0
    from megatron.training.argument_utils import (
        core_transformer_config_from_args,
        gpt_config_from_args,
        pretrain_cfg_container_from_args,
    )
    from megatron.training.arguments import parse_and_validate_args
    from megatron.training.utils import (
        get_blend_and_blend_per_split,
        is_first_or_last_pipeline_stage,
    )

_BATCH_KEYS = ("tokens", "labels", "loss_mask", "attention_mask", "position_ids")


def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None,
                   pg_collection=None):
    """GPTModel with the local spec; ``get_model`` passes the pipeline stage's pre/post_process."""
    args = get_args()
    config = config or core_transformer_config_from_args(args)
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(
            qk_layernorm=args.qk_layernorm, normalization=args.normalization),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        vp_stage=vp_stage,
        pg_collection=pg_collection,
    )


def get_batch(data_iterator, vp_stage=None):
    """TP rank 0 reads the micro-batch; megatron broadcasts it to the other TP ranks."""
    args = get_args()
    if not is_first_or_last_pipeline_stage(vp_stage):
        return None, None, None, None, None
    batch = {}
    if mpu.get_tensor_model_parallel_rank() == 0:
        batch = next(data_iterator)
        batch = {key: batch[key].to(compute_device(), non_blocking=True) if batch.get(key) is not None
                 else None for key in _BATCH_KEYS}
    batch = get_batch_on_this_tp_rank(
        batch,
        has_cu_seqlens=False,
        is_hybrid_cp=False,
        create_attention_mask_in_dataloader=args.create_attention_mask_in_dataloader,
        broadcast_src_rank=mpu.get_tensor_model_parallel_src_rank(),
        broadcast_group=mpu.get_tensor_model_parallel_group(),
        cp_size=args.context_parallel_size,
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        micro_batch_size=args.micro_batch_size,
        seq_length=args.seq_length,
        mtp_on_this_rank=False,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=mpu.is_pipeline_first_stage(),
        is_pipeline_last_stage=mpu.is_pipeline_last_stage(),
    )
    return tuple(batch.get(key) for key in _BATCH_KEYS)


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Masked token loss, in megatron-core 0.19's three-value form.

    Returns the loss SUM over this micro-batch's tokens, the token count, and a report whose
    value is the pair [loss sum, tokens]: the schedule divides by the count unless
    --calculate-per-token-loss, and train_step reduces the pairs over data-parallel ranks
    into the logged per-token 'lm loss'.
    """
    losses = output_tensor.view(-1).float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    report = {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}
    return loss, num_tokens, report


def forward_step(data_iterator, model: GPTModel):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(
        data_iterator, get_attr_wrapped_model(model, "vp_stage"))
    timers("batch-generator").stop()
    output_tensor = model(tokens, position_ids, attention_mask, labels=labels, loss_mask=loss_mask)
    return output_tensor, partial(loss_func, loss_mask)


def is_dataset_built_on_rank(vp_stage=None):
    return mpu.get_tensor_model_parallel_rank() == 0 and is_first_or_last_pipeline_stage(vp_stage)


def gpt_dataset_config_from_args(args) -> GPTDatasetConfig:
    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
        path_to_cache=args.data_cache_path,
        mmap_bin_files=args.mmap_bin_files,
        tokenizer=build_tokenizer(args),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        context_parallel_size=args.context_parallel_size,
        data_parallel_size=args.data_parallel_size,
        sequence_parallel_size=args.tensor_model_parallel_size * args.sequence_parallel,
    )


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    args = get_args()
    dataset_type = MockGPTDataset if args.mock_data else GPTDataset
    print_rank_0("> building train, validation, and test datasets for GPT ...")
    return BlendedMegatronDatasetBuilder(
        dataset_type, train_val_test_num_samples, partial(is_dataset_built_on_rank, vp_stage),
        gpt_dataset_config_from_args(args)).build()


# Every rank builds its datasets (on the ranks that read data) instead of rank 0 broadcasting them.
train_valid_test_datasets_provider.is_distributed = True


def add_driver_args(parser):
    group = parser.add_argument_group(title="mcore_pretrain_gpt")
    group.add_argument("--use-model-config", action="store_true",
                       help="Let megatron build the model from a GPTModelConfig (its own GPT "
                            "builder) instead of calling model_provider.")
    return parser


def main():
    args = parse_and_validate_args(extra_args_provider=add_driver_args)
    if args.use_model_config:
        # megatron.training.models.gpt.GPTModelBuilder: local spec from --transformer-impl local.
        cfg = pretrain_cfg_container_from_args(args, gpt_config_from_args(args))
        pretrain(cfg, train_valid_test_datasets_provider, ModelType.encoder_or_decoder,
                 forward_step)
    else:
        # No model config: pretrain builds the model through get_model(model_provider).
        with warnings.catch_warnings():  # "It is recommended to use a ModelConfig ..."
            warnings.simplefilter("ignore", UserWarning)
            cfg = pretrain_cfg_container_from_args(args, None)
        pretrain(cfg, train_valid_test_datasets_provider, ModelType.encoder_or_decoder,
                 forward_step, model_provider=model_provider)


if __name__ == "__main__":
    main()
