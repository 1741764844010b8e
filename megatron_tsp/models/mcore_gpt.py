"""A Qwen3 decoder as megatron-core's own GPTModel (local spec): the reference for TSP.

The caller initialises Megatron first (``parallel_state.initialize_model_parallel``).
"""

from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from megatron_tsp.config import Qwen3Config
from megatron_tsp.config_adapters import transformer_config_from_qwen3


def build_mcore_qwen3(config: Qwen3Config, tensor_model_parallel_size: int = 1,
                      sequence_parallel: bool = False,
                      params_dtype: torch.dtype = torch.float32,
                      pre_process: bool = True, post_process: bool = True,
                      pipeline_model_parallel_size: int = 1,
                      core_attention: Optional[type] = None) -> GPTModel:
    """GPTModel with the local (no TE, no apex) layer spec and Qwen3's RoPE and embeddings;
    `core_attention` replaces the spec's DotProductAttention (the benchmarks' fused stand-in)."""
    transformer_config = transformer_config_from_qwen3(
        config, tensor_model_parallel_size, sequence_parallel, params_dtype,
        pipeline_model_parallel_size)
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    if core_attention is not None:
        spec.submodules.self_attention.submodules.core_attention = core_attention
    return GPTModel(
        config=transformer_config,
        transformer_layer_spec=spec,
        vocab_size=config.padded_vocab_size(tensor_model_parallel_size),
        max_sequence_length=config.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=config.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=config.rotary_base,
    )
