"""What a layer keeps for backward and what it recomputes, chosen by Megatron's recompute flags.

TSP's attention and MLP run their own backward (the weights stream again), so Megatron's
checkpointing wrappers are not used; the same choices are made inside the layers instead:

    no recompute flag                         keep everything: the fastest, the most memory
    --recompute-granularity selective         the modules named by --recompute-modules:
        core_attn (Megatron's default)          the K/V all-gather and the attention core
        mlp                                     the MLP's fc1 GEMM and SwiGLU activation
    --tsp-recompute-activations               the element-wise parts (q/k RMSNorm and RoPE, the
                                              SwiGLU activation): almost free, no GEMM
    --recompute-granularity full              attention and MLP from the layer's norms' outputs,
      (--recompute-method uniform/block,      for every layer (uniform, --recompute-num-layers 1)
       --recompute-num-layers N)              or the first N of each pipeline stage (block)

Whatever the choice, backward never runs an output projection (linear_proj, linear_fc2) again:
its input is kept or recomputed, its output is never needed.
"""

from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

# Megatron's --recompute-modules that TSP layers honour; Megatron's others name parts that a
# Qwen3 dense model does not have (moe, moe_act, shared_experts, mla_up_proj, gdn_norm_out) or,
# for layernorm, whose outputs the next GEMM keeps anyway (TSP's RMSNorm keeps only its input and
# 1/rms: layers/norm.py)
SUPPORTED_MODULES = ("core_attn", "mlp")


@dataclass(frozen=True)
class Recompute:
    """The parts of one transformer layer that backward recomputes rather than keeps."""

    qkv: bool = False
    """The qkv GEMM and everything of attention after it: only the layer's input is kept."""
    norm_rope: bool = False
    """q/k RMSNorm and RoPE (element-wise); the qkv GEMM's output is kept."""
    core_attn: bool = False
    """The K/V all-gather and the attention core; their inputs (q, the local k and v) are kept."""
    fc1: bool = False
    """The fc1 GEMM and the activation: only the MLP's input is kept."""
    swiglu: bool = False
    """The SwiGLU activation (element-wise); the fc1 GEMM's output is kept."""


NONE = Recompute()
ACTIVATIONS = Recompute(norm_rope=True, swiglu=True)
FULL = Recompute(qkv=True, norm_rope=True, core_attn=True, fc1=True, swiglu=True)

# whole-model choices by the name the planner and the benchmarks give them: TransformerConfig's
# recompute fields (Megatron's flags) and --tsp-recompute-activations
MODES = {
    "none": ({}, False),
    "activations": ({}, True),
    "selective": ({"recompute_granularity": "selective"}, False),
    "full": ({"recompute_granularity": "full", "recompute_method": "uniform",
              "recompute_num_layers": 1}, False),
}


def layer_recomputes(config, num_layers: int, activations: bool = False) -> List[Recompute]:
    """The choice for each of a pipeline stage's `num_layers` layers, from Megatron's
    TransformerConfig fields (recompute_granularity, _method, _num_layers, _modules) and TSP's
    --tsp-recompute-activations. Raises ValueError, naming the flag, for what TSP cannot honour."""
    granularity = getattr(config, "recompute_granularity", None)
    base = ACTIVATIONS if activations else NONE
    if granularity is None:
        return [base] * num_layers
    if granularity == "full":
        method, n = config.recompute_method, config.recompute_num_layers
        if method is None or n is None:
            raise ValueError("--recompute-granularity full needs --recompute-method (uniform or "
                             "block) and --recompute-num-layers, as in Megatron")
        if method == "uniform" and n != 1:
            raise ValueError(f"--recompute-num-layers {n} with --recompute-method uniform: TSP "
                             "recomputes layer by layer, use --recompute-num-layers 1 (every "
                             "layer) or --recompute-method block")
        chosen = num_layers if method == "uniform" else min(n, num_layers)
        return [FULL] * chosen + [base] * (num_layers - chosen)
    modules = _selective_modules(getattr(config, "recompute_modules", None))
    mlp = "mlp" in modules
    return [Recompute(norm_rope=base.norm_rope, core_attn="core_attn" in modules,
                      fc1=mlp, swiglu=mlp or base.swiglu)] * num_layers


def _selective_modules(modules: Optional[List[str]]) -> List[str]:
    modules = ["core_attn"] if modules is None else list(modules)
    unsupported = [m for m in modules if m not in SUPPORTED_MODULES]
    if unsupported:
        raise ValueError(f"--recompute-modules {' '.join(unsupported)} is not supported by TSP "
                         f"layers (supported: {', '.join(SUPPORTED_MODULES)}; "
                         "--tsp-recompute-activations recomputes the element-wise parts)")
    return modules


def mode_recompute(mode: str) -> Recompute:
    """What every layer recomputes under one of MODES."""
    fields, activations = MODES[mode]
    return layer_recomputes(SimpleNamespace(**fields), 1, activations)[0]
