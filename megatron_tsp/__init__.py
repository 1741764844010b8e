"""megatron_tsp: Tensor and Sequence Parallelism (TSP) for Megatron-Core.

Importing the package applies the megatron-core adaptations in ``megatron_tsp.compat`` first.
"""

import megatron_tsp.compat  # noqa: F401  (must run before any megatron.core import)

__version__ = "0.1.0"
