"""Let megatron-core 0.19.2 build a local-spec GPTModel and run its forward and backward on CPU.

megatron-core assumes a CUDA device in a few places that a CPU-only model still reaches. Each
adaptation below is one small function naming the megatron-core place it addresses (the training
loop's are in compat/cpu_training.py). They are applied only where ``torch.cuda.is_available()`` is
False, and never make torch itself lie: ``torch.cuda`` is left untouched; only the megatron
modules listed see a CPU-backed view of it (compat/cpu_view.py).
"""

import copy
import functools
import logging
import warnings

import torch

from megatron_tsp.compat.cpu_view import use_cpu_torch

def _new_tensors_on_cpu() -> None:
    # These modules create tensors on torch.cuda.current_device(), which raises without CUDA.
    import megatron.core.models.common.embeddings.rotary_pos_embedding as rotary
    import megatron.core.tensor_parallel.layers as layers
    import megatron.core.tensor_parallel.mappings as mappings
    import megatron.core.utils as core_utils

    for module in (
        core_utils,  # GlobalMemoryBuffer.get_tensor: core attention's matmul buffer, SP gathers
        mappings,  # _gather_along_first_dim, _reduce_scatter_along_first_dim, ...: SP collectives
        layers,  # LinearWithGradAccumulationAndAsyncCommunication.backward: SP input all-gather
        rotary,  # RotaryEmbedding.forward moves inv_freq from the CPU to the current CUDA device
    ):
        use_cpu_torch(module)


def _rng_tracker_on_cpu_generator() -> None:
    # megatron/core/tensor_parallel/random.py: CudaRNGStatesTracker.add and
    # model_parallel_cuda_manual_seed call torch.cuda.get_rng_state / manual_seed (which assert
    # or are silently deferred forever without CUDA), and _get/_set_cuda_rng_state (used by
    # CudaRNGStatesTracker.fork and activation checkpointing) read the CUDA default generator.
    # Back them all with the CPU generator, so a fork really switches the stream CPU ops draw from.
    import megatron.core.tensor_parallel.random as tp_random

    use_cpu_torch(tp_random)
    tp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    # CudaRNGStatesTracker.fork warns when the CPU state changes inside a fork; on CPU that state
    # is the forked one, so every random op inside the fork (dropout) would warn.
    logging.getLogger(tp_random.__name__).addFilter(
        lambda record: "CPU RNG state changed within GPU RNG context" not in record.getMessage())


def _causal_mask_on_cpu() -> None:
    # megatron/core/transformer/utils.py get_default_causal_mask builds the mask with
    # device="cuda"; FusedScaleMaskSoftmax.forward_torch_softmax (core attention without the
    # fused kernel) calls it through its own import in megatron/core/fusions/fused_softmax.py.
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.transformer.utils as transformer_utils

    def get_default_causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    transformer_utils.get_default_causal_mask = get_default_causal_mask
    fused_softmax.get_default_causal_mask = get_default_causal_mask


def _torch_norm_with_sequence_parallel() -> None:
    # megatron/core/transformer/torch_norm.py WrappedTorchNorm.__new__ (the norm of the local spec
    # when apex is absent) refuses sequence_parallel. A torch norm is per token, so it is exact on
    # a sequence shard; what SP needs is its weight marked `sequence_parallel`, so that
    # finalize_model_grads (_allreduce_non_tensor_model_parallel_grads) sums the partial grads
    # over the tensor-parallel group, as apex's and TE's norms do (q/k norms included; that
    # function sums those by name anyway, since their grads are partial over heads).
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    build = WrappedTorchNorm.__new__

    def new(cls, config, *args, **kwargs):
        if not config.sequence_parallel:
            return build(cls, config, *args, **kwargs)
        without_sp = copy.copy(config)
        without_sp.sequence_parallel = False
        norm = build(cls, without_sp, *args, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm

    WrappedTorchNorm.__new__ = staticmethod(new)


def _quiet_gpu_extras_warnings() -> None:
    # megatron/core/optimizer/*.py, fsdp mixed_precision.py, models/backends.py warn at import
    # that TE/apex are absent; on a CPU machine they never can be, so the warnings are noise.
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", message="Apex is not installed")


@functools.cache
def apply_cpu_adaptations() -> None:
    """Apply every CPU adaptation once, and only on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    _quiet_gpu_extras_warnings()
    _new_tensors_on_cpu()
    _rng_tracker_on_cpu_generator()
    _causal_mask_on_cpu()
    _torch_norm_with_sequence_parallel()
