"""Qwen3Config to and from the other descriptions of the same model: Megatron's args (the
launcher's flags), Megatron's TransformerConfig and Hugging Face's config.json.

Every translation of the model shape lives here: SHAPE_FLAGS is the one list of the flags that
set it, ROPE_FLAGS of those that choose its rotary embedding (plain RoPE or YaRN).
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from megatron_tsp.config import Qwen3Config, YarnScaling

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
POSITION_FLAG = "--position-embedding-type"
# flag -> (Megatron's args name, YarnScaling field): Megatron's YaRN flags, which
# --position-embedding-type yarn reads (None in the args: Megatron's default, YarnScaling's)
YARN_FLAGS = {
    "--rotary-scaling-factor": ("rotary_scaling_factor", "factor"),
    "--yarn-original-max-position-embeddings": ("yarn_original_max_position_embeddings",
                                                "original_max_position_embeddings"),
    "--yarn-beta-fast": ("yarn_beta_fast", "beta_fast"),
    "--yarn-beta-slow": ("yarn_beta_slow", "beta_slow"),
    "--mscale": ("mscale", "mscale"),
    "--mscale-all-dim": ("mscale_all_dim", "mscale_all_dim"),
    "--yarn-correction-range-round-to-int": ("yarn_correction_range_round_to_int",
                                             "correction_range_round_to_int"),
}
# flag -> Megatron's args name of everything that chooses the rotary embedding
ROPE_FLAGS = {POSITION_FLAG: "position_embedding_type",
              **{flag: dest for flag, (dest, _) in YARN_FLAGS.items()}}
# what makes a Megatron GPT a Qwen3, in Megatron's args (transformer_config_from_qwen3 says the
# same in a TransformerConfig): always set
QWEN3_ARCHITECTURE_ARGS = dict(qk_layernorm=True, swiglu=True, normalization="RMSNorm",
                               add_bias_linear=False, add_qkv_bias=False,
                               group_query_attention=True)


def megatron_shape(config: Qwen3Config) -> dict:
    """{Megatron args name: value} of every shape flag, the untied tables, the vocabulary and
    the rotary embedding (the YaRN flags only with YaRN: plain RoPE leaves them as given)."""
    shape = {dest: getattr(config, field) for dest, field in SHAPE_FLAGS.values()}
    shape["untie_embeddings_and_output_weights"] = not config.tie_word_embeddings
    shape["vocab_size"] = config.vocab_size
    shape["position_embedding_type"] = "rope" if config.yarn is None else "yarn"
    if config.yarn is not None:
        shape.update({dest: getattr(config.yarn, field) for dest, field in YARN_FLAGS.values()})
    return shape


def yarn_from_args(args) -> Optional[YarnScaling]:
    """The YaRN scaling Megatron's args describe, None for plain RoPE; ValueError naming the
    flag for a position embedding TSP does not have or a YaRN flag that plain RoPE would
    ignore."""
    kind = args.position_embedding_type
    if kind not in ("rope", "yarn"):
        raise ValueError(f"{POSITION_FLAG} {kind} is not supported: Qwen3 uses rope, or yarn to "
                         "extend its context")
    given = {flag: (field, getattr(args, dest)) for flag, (dest, field) in YARN_FLAGS.items()
             if getattr(args, dest) is not None}
    if kind == "yarn":
        return YarnScaling(**{field: value for field, value in given.values()})
    # Megatron reads them only for yarn: a value other than YaRN's default would do nothing
    for flag, (field, value) in given.items():
        if value != getattr(YarnScaling(), field):
            raise ValueError(f"{flag} {value} needs {POSITION_FLAG} yarn: with rope Megatron "
                             "ignores it")
    return None


def add_rope_arguments(parser) -> None:
    """Megatron's rotary flags with Megatron's names, types and meaning, for a command line that
    is not Megatron's (the planner's); a YaRN flag left out takes Megatron's default."""
    parser.add_argument(POSITION_FLAG, choices=["rope", "yarn"], default="rope")
    for flag, (dest, field) in YARN_FLAGS.items():
        kind = type(getattr(YarnScaling(), field))
        if kind is bool:
            parser.add_argument(flag, dest=dest, action="store_true", default=None)
            parser.add_argument(flag.replace("--yarn-", "--no-yarn-"), dest=dest,
                                action="store_false")
        else:
            parser.add_argument(flag, dest=dest, type=kind, help=f"YaRN's {field}")


def qwen3_config_from_args(args, vocab_size: int):
    """The model shape Megatron's args describe (after prepare_args)."""
    fields = {field: getattr(args, dest) for dest, field in SHAPE_FLAGS.values()}
    fields["rotary_base"] = float(fields["rotary_base"])
    return Qwen3Config(vocab_size=vocab_size,
                       tie_word_embeddings=not args.untie_embeddings_and_output_weights,
                       make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                       yarn=yarn_from_args(args), **fields)


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


def _rope_settings(hf_config: dict, path: str) -> Tuple[str, dict]:
    """(the key, the rope dict) transformers builds its rotary embedding from: rope_scaling (4.x;
    5.x also prefers it) else rope_parameters (5.x), else neither; its type under "rope_type",
    the top-level rope_theta in it when it has none. Two keys that disagree are refused."""
    readings = {}
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf_config.get(key)
        if not rope:  # transformers reads an empty one as absent
            continue
        if not isinstance(rope, dict):
            raise ValueError(f"{path}: {key} must be an object, got {rope!r}")
        reading = {name: value for name, value in rope.items() if name != "type"}
        reading["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
        reading.setdefault("rope_theta", hf_config.get("rope_theta"))
        readings[key] = reading
    if len(readings) == 2 and readings["rope_scaling"] != readings["rope_parameters"]:
        raise ValueError(f"{path}: rope_scaling and rope_parameters disagree: "
                         f"{readings['rope_scaling']} and {readings['rope_parameters']}")
    key, rope = next(iter(readings.items()), (
        "rope_theta", {"rope_type": "default", "rope_theta": hf_config.get("rope_theta")}))
    theta = rope.get("rope_theta")
    if theta is None:
        # transformers would fall back to 10000, which no published Qwen3 uses
        raise ValueError(f"{path}: missing 'rope_theta' (or 'rope_parameters.rope_theta')")
    top = hf_config.get("rope_theta")
    if top is not None and float(top) != float(theta):
        raise ValueError(f"{path}: rope_theta and {key}.rope_theta disagree: {top} and {theta}")
    return key, rope


def _yarn_mscale(attention_factor: float, factor: float, path: str) -> float:
    """The --mscale that gives an explicit attention factor with --mscale-all-dim 0, where
    Megatron's factor is 0.1·mscale·ln(factor) + 1 (equal to the last bit of a double)."""
    if factor > 1:
        return 10 * (attention_factor - 1) / math.log(factor)
    if attention_factor != 1:
        raise ValueError(f"{path}: attention_factor {attention_factor} with factor {factor}: "
                         "Megatron's YaRN applies no attention factor at factor 1, so its flags "
                         "cannot express it")
    return 1.0


def _yarn_from_hf(rope: dict, key: str, hf_config: dict, path: str) -> YarnScaling:
    """Megatron's YaRN flags that give the rotary embedding transformers builds from `rope`
    (modeling_rope_utils.py, _compute_yarn_parameters and standardize_rope_params)."""
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{path}: {key}.partial_rotary_factor {rope['partial_rotary_factor']}: "
                         "TSP rotates the whole head")
    if "factor" not in rope:
        raise ValueError(f"{path}: {key} of rope_type 'yarn' needs 'factor'")
    positions = hf_config.get("max_position_embeddings") or _OPTIONAL_KEYS[
        "max_position_embeddings"][1]
    # transformers prefers a top-level original_max_position_embeddings to the rope dict's,
    # and takes max_position_embeddings when neither has one
    original = (hf_config.get("original_max_position_embeddings")
                or rope.get("original_max_position_embeddings") or positions)
    factor = rope["factor"] if rope["factor"] is not None else positions / original
    mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
    if rope.get("attention_factor") is not None:
        mscale, mscale_all_dim = _yarn_mscale(rope["attention_factor"], factor, path), 0.0
    elif not (mscale and mscale_all_dim):
        # transformers then takes the default 0.1·ln(factor) + 1, ignoring a lone mscale
        mscale, mscale_all_dim = 1.0, 0.0
    try:
        return YarnScaling(
            factor=float(factor), original_max_position_embeddings=int(original),
            # transformers' defaults (Megatron's too) replace 0 as well as a missing value
            beta_fast=float(rope.get("beta_fast") or 32),
            beta_slow=float(rope.get("beta_slow") or 1),
            mscale=float(mscale), mscale_all_dim=float(mscale_all_dim),
            correction_range_round_to_int=bool(rope.get("truncate", True)))
    except ValueError as error:
        raise ValueError(f"{path}: {key}: {error}") from None


def _rope_from_hf(hf_config: dict, path: str) -> Tuple[float, Optional[YarnScaling]]:
    """(theta, YaRN scaling or None) of config.json; any other rope type is refused."""
    key, rope = _rope_settings(hf_config, path)
    kind = rope["rope_type"]
    if kind not in ("default", "yarn"):
        raise ValueError(f"{path}: {key}.rope_type {kind!r} is not supported; only plain RoPE "
                         "('default') and 'yarn' are")
    yarn = _yarn_from_hf(rope, key, hf_config, path) if kind == "yarn" else None
    return float(rope["rope_theta"]), yarn


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
    fields["rotary_base"], fields["yarn"] = _rope_from_hf(hf_config, path)
    return Qwen3Config(**fields)


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
        **_hf_rope(config),
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


def _hf_yarn(yarn: YarnScaling) -> dict:
    """The rope dict from which transformers builds Megatron's YaRN of these flags."""
    rope = {"rope_type": "yarn", "factor": yarn.factor,
            "original_max_position_embeddings": yarn.original_max_position_embeddings,
            "beta_fast": yarn.beta_fast, "beta_slow": yarn.beta_slow}
    if not yarn.correction_range_round_to_int:
        rope["truncate"] = False  # transformers truncates unless told not to
    if yarn.mscale and yarn.mscale_all_dim:
        rope.update(mscale=yarn.mscale, mscale_all_dim=yarn.mscale_all_dim)
    elif (yarn.mscale, yarn.mscale_all_dim) != (1.0, 0.0):
        # transformers' only other rule is the default 0.1·ln(factor) + 1 (mscale 1, all-dim 0)
        rope["attention_factor"] = yarn.attention_factor
    return rope


def _hf_rope(config: Qwen3Config) -> dict:
    """config.json's rope keys: 4.x reads rope_theta and rope_scaling, 5.x rope_parameters."""
    theta = config.rotary_base
    if config.yarn is None:
        return {"rope_theta": theta, "rope_parameters": {"rope_type": "default",
                                                         "rope_theta": theta},
                "rope_scaling": None}
    scaling = _hf_yarn(config.yarn)
    return {"rope_theta": theta, "rope_parameters": {**scaling, "rope_theta": theta},
            "rope_scaling": scaling}
