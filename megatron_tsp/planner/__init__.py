"""Which layout to train with: per-GPU memory (memory.py), bytes on the wire (transfers.py) and
FLOPs (flops.py) of TSP and the layouts it is compared with, and the plan that ranks them
(plan.py; `python -m megatron_tsp.planner`)."""
