"""Qwen3Config to and from the other descriptions of the same model: Megatron's args (the
launcher's flags), Megatron's TransformerConfig and Hugging Face's config.json.

Every translation of the model shape lives here, and SHAPE_FLAGS is the one list of the flags
that set it.
"""

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from megatron_tsp.config import Qwen3Config

# flag -> (Megatron's args name, Qwen3Config field): the shape flags of the launcher (the
# vocabulary comes from the tokenizer, tied embeddings from --untie-embeddings-and-output-weights)
SHAPE_FLAGS = {
    "--num-layers": ("num_layers", "num_layers"),
    "--hidden-size": ("hidden_size", "hidden_size"),
    "--num-attention-heads": ("num_attention_heads", "num_attention_heads"),
    "--num-query-groups": ("num_query_groups", "num_query_groups"),
    "--kv-channels": ("kv_channels", "kv_channels"),
    "--ffn-hidden-size": ("ffn_hidden_size", "ffn_hidden_size"),
    "--max-position-embeddings": ("max_position_embeddings", "max_position_embeddings"),
    "--norm-epsilon": ("layernorm_epsilon", "norm_epsilon"),
    "--rotary-base": ("rotary_base", "rotary_base"),
    "--init-method-std": ("init_method_std", "init_method_std"),
}
UNTIE_FLAG = "--untie-embeddings-and-output-weights"
# what makes a Megatron GPT a Qwen3, in Megatron's args (transformer_config_from_qwen3 says the
# same in a TransformerConfig): always set
QWEN3_ARCHITECTURE_ARGS = dict(qk_layernorm=True, swiglu=True, normalization="RMSNorm",
                               add_bias_linear=False, add_qkv_bias=False,
                               group_query_attention=True, position_embedding_type="rope",
                               rotary_percent=1.0)


def megatron_shape(config: Qwen3Config) -> dict:
    """{Megatron args name: value} of every shape flag, the untied tables and the vocabulary."""
    shape = {dest: getattr(config, field) for dest, field in SHAPE_FLAGS.values()}
    shape["untie_embeddings_and_output_weights"] = not config.tie_word_embeddings
    shape["vocab_size"] = config.vocab_size
    return shape


def qwen3_config_from_args(args, vocab_size: int):
    """The model shape Megatron's args describe (after prepare_args)."""
    fields = {field: getattr(args, dest) for dest, field in SHAPE_FLAGS.values()}
    fields["rotary_base"] = float(fields["rotary_base"])
    return Qwen3Config(vocab_size=vocab_size,
                       tie_word_embeddings=not args.untie_embeddings_and_output_weights,
                       make_vocab_size_divisible_by=args.make_vocab_size_divisible_by, **fields)


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


# config.json key -> Qwen3Config field; a guessed value would silently build another model
_REQUIRED_KEYS = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "intermediate_size": "ffn_hidden_size",
    "vocab_size": "vocab_size",
}
# config.json key -> (Qwen3Config field, transformers' Qwen3Config default), so we read a
# config exactly as transformers (4.x and 5.x) would
_OPTIONAL_KEYS = {
    "head_dim": ("kv_channels", 128),
    "rms_norm_eps": ("norm_epsilon", 1e-6),
    "max_position_embeddings": ("max_position_embeddings", 32768),
    "tie_word_embeddings": ("tie_word_embeddings", False),
    "initializer_range": ("init_method_std", 0.02),
}


def _rope_theta(hf_config: dict, path: str) -> float:
    """rope_theta (transformers 4.x) or rope_parameters["rope_theta"] (5.x); plain RoPE only."""
    params = hf_config.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"{path}: rope_parameters.rope_type {params['rope_type']!r} is not "
                         "supported; only plain RoPE ('default') is")
    if hf_config.get("rope_scaling"):
        raise ValueError(f"{path}: rope_scaling {hf_config['rope_scaling']!r} is not supported")
    thetas = {float(v) for v in (hf_config.get("rope_theta"), params.get("rope_theta"))
              if v is not None}
    if not thetas:
        # transformers would fall back to 10000, which no published Qwen3 uses
        raise ValueError(f"{path}: missing 'rope_theta' (or 'rope_parameters.rope_theta')")
    if len(thetas) > 1:
        raise ValueError(f"{path}: rope_theta and rope_parameters.rope_theta disagree: {thetas}")
    return thetas.pop()


def _reject_unsupported(hf_config: dict, path: str) -> None:
    """Features of the HF Qwen3 class that dense Qwen3 checkpoints (and our model) do not use."""
    if hf_config.get("attention_bias"):
        raise ValueError(f"{path}: 'attention_bias' is true; Qwen3 dense models have no biases")
    if hf_config.get("use_sliding_window"):
        raise ValueError(f"{path}: 'use_sliding_window' is true; only full attention is supported")
    if any(t != "full_attention" for t in hf_config.get("layer_types") or ()):
        raise ValueError(f"{path}: 'layer_types' has non-full attention layers")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: 'hidden_act' is {hf_config['hidden_act']!r}, not 'silu'")


def qwen3_config_from_hf(hf_config: dict, path_for_errors: str) -> Qwen3Config:
    """The Qwen3Config of a Hugging Face config.json dict; ValueError naming the key and file."""
    path = path_for_errors
    model_type = hf_config.get("model_type")
    if model_type != "qwen3":
        raise ValueError(f"{path}: model_type {model_type!r} is not 'qwen3'")
    _reject_unsupported(hf_config, path)
    fields = {}
    for key, field in _REQUIRED_KEYS.items():
        if hf_config.get(key) is None:
            raise ValueError(f"{path}: missing required key {key!r}")
        fields[field] = hf_config[key]
    for key, (field, default) in _OPTIONAL_KEYS.items():
        value = hf_config.get(key)
        fields[field] = default if value is None else value
    return Qwen3Config(rotary_base=_rope_theta(hf_config, path), **fields)


def hf_config_from_qwen3(config: Qwen3Config, dtype: str = "bfloat16") -> dict:
    """A config.json dict for Qwen3ForCausalLM that transformers 4.x and 5.x both read."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_query_groups,
        "head_dim": config.kv_channels,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.norm_epsilon,
        "tie_word_embeddings": config.tie_word_embeddings,
        # 4.x reads rope_theta, 5.x reads rope_parameters
        "rope_theta": config.rotary_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rotary_base},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.num_layers,
        "initializer_range": config.init_method_std,
        "use_cache": True,
        # 4.x reads torch_dtype, 5.x reads dtype
        "torch_dtype": dtype,
        "dtype": dtype,
    }
