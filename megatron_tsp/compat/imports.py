"""Let ``import megatron.training`` succeed on Python 3.11.

megatron/training/models/gpt.py and hybrid.py import typing.override (Python 3.12+; megatron-core
0.19.2 declares >= 3.12). scripts/setup.sh provides it at interpreter start-up (a .pth line), so
that plain scripts import megatron.training too; this covers the environments that import
megatron_tsp from a checkout without that script: the containers' and gpu_check.sh's, which keep
the Python and torch they find.
"""

import functools
import typing


@functools.cache
def apply_import_adaptations() -> None:
    if not hasattr(typing, "override"):
        typing.override = lambda fn: fn
