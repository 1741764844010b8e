"""megatron_tsp: Tensor and Sequence Parallelism (TSP) for Megatron-Core.

Importing the package first adapts megatron-core to the machine (``megatron_tsp.compat``), then
applies what this project changes in Megatron everywhere (``megatron_tsp.fixes``).
"""

import megatron_tsp.compat  # noqa: F401  (must run before any megatron.core import)
import megatron_tsp.fixes  # noqa: F401

__version__ = "0.1.0"
