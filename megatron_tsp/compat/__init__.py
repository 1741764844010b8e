"""Adaptations of megatron-core 0.19.2 to the machines it does not expect.

Applied automatically by ``import megatron_tsp`` before anything imports ``megatron.core``.
Each adaptation is applied only where it is needed (Python < 3.12, no CUDA; the optimizer resume
fix wherever the fused apex/TE optimizer is absent) and is commented with the megatron-core place
it addresses; the warnings that do not concern a TSP user are filtered everywhere.
"""

from megatron_tsp.compat.cpu import apply_cpu_adaptations
from megatron_tsp.compat.imports import apply_import_adaptations
from megatron_tsp.compat.quiet import apply_quiet_memory_report, apply_warning_filters
from megatron_tsp.compat.safe_loading import apply_safe_loading
from megatron_tsp.compat.tracker import apply_atomic_tracker
from megatron_tsp.compat.training import apply_training_adaptations

apply_warning_filters()
apply_import_adaptations()
apply_cpu_adaptations()
apply_training_adaptations()
apply_safe_loading()
apply_atomic_tracker()
apply_quiet_memory_report()
