"""A Qwen3 decoder as megatron-core's own GPTModel (local spec): the reference for TSP.

The caller initialises Megatron first (``parallel_state.initialize_model_parallel``).
"""

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from megatron_tsp.config import Qwen3Config


def transformer_config_from_qwen3(config: Qwen3Config, tensor_model_parallel_size: int = 1,
                                  sequence_parallel: bool = False,
                                  params_dtype: torch.dtype = torch.float32,
                                  pipeline_model_parallel_size: int = 1) -> TransformerConfig:
    """Megatron's TransformerConfig with Qwen3's numerics and every CUDA-only fusion off."""
    if sequence_parallel and tensor_model_parallel_size == 1:
        raise ValueError("sequence_parallel needs tensor_model_parallel_size > 1")
    return TransformerConfig(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        num_query_groups=config.num_query_groups,
        kv_channels=config.kv_channels,
        ffn_hidden_size=config.ffn_hidden_size,
        # Qwen3: RMSNorm everywhere, per-head RMSNorm on q and k, SwiGLU MLP, no linear biases.
        normalization="RMSNorm",
        layernorm_epsilon=config.norm_epsilon,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=config.init_method_std,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        sequence_parallel=sequence_parallel,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        # Without CUDA, weights can only be created on the CPU; the fused kernels (apex, TE,
        # masked softmax, bias fusions, RoPE fusion) do not exist there.
        use_cpu_initialization=not torch.cuda.is_available(),
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
    )


def build_mcore_qwen3(config: Qwen3Config, tensor_model_parallel_size: int = 1,
                      sequence_parallel: bool = False,
                      params_dtype: torch.dtype = torch.float32,
                      pre_process: bool = True, post_process: bool = True,
                      pipeline_model_parallel_size: int = 1) -> GPTModel:
    """GPTModel with the local (no TE, no apex) layer spec and Qwen3's RoPE and embeddings."""
    transformer_config = transformer_config_from_qwen3(
        config, tensor_model_parallel_size, sequence_parallel, params_dtype,
        pipeline_model_parallel_size)
    return GPTModel(
        config=transformer_config,
        transformer_layer_spec=get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"),
        vocab_size=config.padded_vocab_size(tensor_model_parallel_size),
        max_sequence_length=config.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=config.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=config.rotary_base,
    )
