"""Let ``import megatron.core`` and ``import megatron.training`` succeed without triton or 3.12."""

import importlib.util
import sys
import types
import typing

# megatron/core/transformer/moe/paged_stash.py imports the triton kernels module
# megatron/core/transformer/moe/ops/paged_stash.py unconditionally, so `import megatron.core`
# fails where triton is absent (CPU machines). Only MoE paged stashing (CUDA only) uses them.
_PAGED_STASH_OPS = "megatron.core.transformer.moe.ops.paged_stash"


def _paged_stash_kernel(*args, **kwargs):
    raise RuntimeError("MoE paged stash kernels need triton, which is not installed")


def _stand_in_for_paged_stash_ops() -> None:
    if importlib.util.find_spec("triton") is not None or _PAGED_STASH_OPS in sys.modules:
        return
    ops = types.ModuleType(_PAGED_STASH_OPS)
    ops.GLOBAL_BLOCK_SIZE = 1024
    ops.paged_stash_copy_kernel = _paged_stash_kernel
    ops.paged_stash_pop_kernel = _paged_stash_kernel
    sys.modules[_PAGED_STASH_OPS] = ops


def _provide_typing_override() -> None:
    # megatron/training/models/gpt.py and hybrid.py import typing.override (Python 3.12+).
    if not hasattr(typing, "override"):
        typing.override = lambda fn: fn


def apply_import_adaptations() -> None:
    _stand_in_for_paged_stash_ops()
    _provide_typing_override()
