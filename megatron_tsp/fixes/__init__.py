"""What this project changes in megatron-core 0.19.2 on every machine, GPUs included.

Each module fixes one behaviour of Megatron, names the megatron place it addresses and says why:

- tracker.py: the checkpoint tracker file is replaced atomically, never truncated then written;
- safe_loading.py: checkpoint metadata and tensors are unpickled by a restricted unpickler;
- optimizer_resume.py: the distributed optimizer resumes with the state it saved;
- failed_save.py: a failed checkpoint save says why and leaves no partial directory;
- log_interval.py: the first logged iteration closes its --log-interval window.

Applied by ``import megatron_tsp``, after ``megatron_tsp.compat`` has made Megatron importable
and runnable on the machine; every ``apply_*`` runs once (``functools.cache``).
"""

from megatron_tsp.fixes.failed_save import apply_failed_save_report
from megatron_tsp.fixes.log_interval import apply_log_interval_fix
from megatron_tsp.fixes.optimizer_resume import apply_optimizer_resume_fix
from megatron_tsp.fixes.safe_loading import apply_safe_loading
from megatron_tsp.fixes.tracker import apply_atomic_tracker

apply_optimizer_resume_fix()
apply_failed_save_report()
apply_log_interval_fix()
apply_safe_loading()
apply_atomic_tracker()
