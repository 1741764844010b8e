"""Adaptations of megatron-core 0.19.2 to the machines it does not expect, and to a TSP user's log.

Applied by ``import megatron_tsp`` before anything else imports ``megatron.core``; each only
where it is needed (Python < 3.12: imports.py; no CUDA: cpu.py, cpu_training.py, through the one
CPU view of torch in cpu_view.py) and commented with the megatron-core place it addresses. On a
GPU machine with Python 3.12 nothing here changes what Megatron computes; quiet.py only filters
warnings that do not concern a TSP user. What this project changes in Megatron on every machine
is in ``megatron_tsp/fixes/``. Every ``apply_*`` runs once (``functools.cache``).
"""

from megatron_tsp.compat.cpu import apply_cpu_adaptations
from megatron_tsp.compat.cpu_training import apply_cpu_training_adaptations
from megatron_tsp.compat.imports import apply_import_adaptations
from megatron_tsp.compat.quiet import apply_quiet_memory_report, apply_warning_filters

apply_warning_filters()
apply_import_adaptations()
apply_cpu_adaptations()
apply_cpu_training_adaptations()
apply_quiet_memory_report()
