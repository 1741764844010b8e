"""Let Megatron's own training loop (``megatron.training`` of megatron-core 0.19.2) run on CPU.

``apply_cpu_training_adaptations()`` (applied by ``import megatron_tsp``, see
``compat/__init__.py``) applies, once and on a machine without CUDA only, the adaptations below.
Each is a small function naming the megatron place it addresses. Like ``compat/cpu.py`` they never
make torch itself lie: the megatron modules listed see the CPU view of ``torch`` of
``compat/cpu_view.py``; everything else is unchanged, except two ``torch.Tensor`` methods swapped
only while named megatron functions run. (What this project changes in Megatron on every machine,
GPUs included, is in ``megatron_tsp/fixes/``.)

Flags a CPU run still needs (there is no CUDA kernel to fall back from): ``--distributed-backend
gloo --transformer-impl local --use-cpu-initialization --no-gradient-accumulation-fusion
--no-persist-layer-norm --no-masked-softmax-fusion --no-bias-gelu-fusion --no-bias-dropout-fusion``
(``--no-rope-fusion`` with ``--position-embedding-type rope``) and ``CUDA_DEVICE_MAX_CONNECTIONS=1``
in the environment when TP > 1.
"""

import functools
import importlib
import os
import resource

import torch

from megatron_tsp.compat.cpu_view import nothing, use_cpu_torch


def _initialize_without_cuda() -> None:
    # megatron/training/training.py pretrain calls initialize_megatron without allow_no_cuda, so
    # megatron/training/initialize.py initialize_megatron asserts torch.cuda.is_available().
    import megatron.training.initialize as initialize
    import megatron.training.training as training

    training.initialize_megatron = functools.partial(initialize.initialize_megatron,
                                                     allow_no_cuda=True)
    # initialize.py _initialize_distributed creates the model-parallel groups, and
    # _set_random_seed seeds the tensor-parallel RNG tracker, only when
    # torch.cuda.device_count() > 0: on the CPU there is one device, the CPU (set_device is
    # then a no-op). MoE's aux-loss scale is created on current_device().
    use_cpu_torch(initialize.__name__, device_count=lambda: 1, set_device=nothing)


def _no_jit_warmup() -> None:
    # megatron/training/initialize.py _warmup_jit_function (called by set_jit_fusion_options in
    # pretrain) runs the bias-gelu/swiglu and bias-dropout-add fusions on torch.rand inputs
    # created with device="cuda". On the CPU those draws come from the generator that then
    # initialises the weights, and how many it draws depends on the configuration (e.g. the
    # sequence-parallel shard length): runs at different parallel layouts would start from
    # different weights. Nothing needs warming on the CPU (the fusions are off), so skip it.
    import megatron.training.initialize as initialize

    initialize._warmup_jit_function = nothing


def _prebuilt_dataset_helpers() -> None:
    # megatron/training/initialize.py _compile_dependencies runs `make` in
    # megatron/core/datasets (megatron/core/datasets/utils.py compile_helpers) on rank 0 at
    # every start. The wheel ships the helpers prebuilt; only build them if they do not import.
    import megatron.core.datasets.utils as dataset_utils

    build = dataset_utils.compile_helpers

    def compile_helpers():
        try:
            importlib.import_module("megatron.core.datasets.helpers_cpp")
        except ImportError:
            build()

    dataset_utils.compile_helpers = compile_helpers


def _no_device_architecture() -> None:
    # megatron/training/arguments.py validate_args asks get_device_arch_version()
    # (megatron/training/utils/common_utils.py: torch.cuda.get_device_properties) when TP or
    # CP > 1; reached through three names. The CPU is no Blackwell (>= 10): answer 0, which
    # keeps the CUDA_DEVICE_MAX_CONNECTIONS=1 requirement.
    import megatron.training.arguments as arguments
    import megatron.training.utils as utils
    import megatron.training.utils.common_utils as common_utils

    for module in (arguments, utils, common_utils):
        module.get_device_arch_version = lambda: 0


def _model_stays_on_cpu() -> None:
    # megatron/training/training.py get_model (model_provider path) and
    # megatron/training/models/dist_utils.py (model-config path) move each model chunk with
    # model_module.cuda(torch.cuda.current_device()), which torch refuses without CUDA. A
    # MegatronModule built with --use-cpu-initialization is already where it belongs.
    from megatron.core.transformer.module import MegatronModule

    MegatronModule.cuda = lambda self, device=None, *args, **kwargs: self


_tensor_method_depth = {}


def _with_tensor_method(name, make_method):
    """Decorator: while fn runs (re-entrantly), torch.Tensor.<name> is make_method(real)."""
    real = getattr(torch.Tensor, name)
    replacement = make_method(real)

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            depth = _tensor_method_depth.get(name, 0)
            if depth == 0:
                setattr(torch.Tensor, name, replacement)
            _tensor_method_depth[name] = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                _tensor_method_depth[name] -= 1
                if _tensor_method_depth[name] == 0:
                    delattr(torch.Tensor, name)  # back to the torch._C.TensorBase method
        return run
    return decorate


def _cuda_type_name(real):
    def type_(self, dtype=None, non_blocking=False, **kwargs):
        name = real(self, dtype, non_blocking, **kwargs)
        if dtype is None and not kwargs and self.device.type == "cpu":
            return name.replace("torch.", "torch.cuda.", 1)
        return name
    return type_


def _cuda_stays_on_cpu(real):
    def cuda(self, device=None, non_blocking=False, **kwargs):
        return self if self.device.type == "cpu" else real(self, device, non_blocking, **kwargs)
    return cuda


# CPU tensors' .type() answers with the CUDA type name megatron checks for.
_cuda_type_names_for_cpu_tensors = _with_tensor_method("type", _cuda_type_name)
# A CPU tensor's .cuda() is the tensor itself (as a CUDA tensor's is on a GPU).
_tensor_cuda_on_cpu = _with_tensor_method("cuda", _cuda_stays_on_cpu)


def _optimizer_accepts_cpu_params() -> None:
    # megatron/core/optimizer/distrib_optimizer.py DistributedOptimizer.__init__ and
    # _build_model_and_main_param_groups sort params by param.type() == 'torch.cuda.FloatTensor'
    # (or Half/BFloat16), raising TypeError for anything else; megatron/core/optimizer/
    # clip_grads.py clip_grad_by_total_norm_fp32 asserts grad.type() == 'torch.cuda.FloatTensor';
    # megatron/core/optimizer/optimizer.py Float16OptimizerWithFloat16Params.__init__ (bf16/fp16)
    # sorts like the distributed optimizer. Let those checks see CPU tensors as their CUDA kind.
    import megatron.core.optimizer.clip_grads as clip_grads
    import megatron.core.optimizer.optimizer as optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    build = DistributedOptimizer._build_model_and_main_param_groups.__func__
    DistributedOptimizer._build_model_and_main_param_groups = classmethod(
        _cuda_type_names_for_cpu_tensors(build))
    DistributedOptimizer.__init__ = _cuda_type_names_for_cpu_tensors(DistributedOptimizer.__init__)
    optimizer.Float16OptimizerWithFloat16Params.__init__ = _cuda_type_names_for_cpu_tensors(
        optimizer.Float16OptimizerWithFloat16Params.__init__)
    clip = _cuda_type_names_for_cpu_tensors(clip_grads.clip_grad_by_total_norm_fp32)
    clip_grads.clip_grad_by_total_norm_fp32 = clip
    optimizer.clip_grad_by_total_norm_fp32 = clip


def _tied_embeddings_across_stages_on_cpu() -> None:
    # megatron/core/models/common/language_module/language_module.py
    # LanguageModule.setup_embeddings_and_output_layer: with pipeline parallelism and tied
    # embeddings, the first and last stages all_reduce the shared weight after
    # `weight.data = weight.data.cuda()`.
    from megatron.core.models.common.language_module.language_module import LanguageModule

    LanguageModule.setup_embeddings_and_output_layer = _tensor_cuda_on_cpu(
        LanguageModule.setup_embeddings_and_output_layer)


def _optimizer_state_gathers_on_cpu() -> None:
    # megatron/core/optimizer/distrib_optimizer.py get_parameter_state_dp_zero (the fully
    # reshardable optimizer checkpoint, --dist-ckpt-optim-fully-reshardable) gathers with
    # use_gloo_comm=False by moving the shards to the GPU (send_tensor.cuda()). On the CPU the
    # gloo path is the one that fits: same gather, on the gloo data-parallel group, CPU tensors.
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    gather = DistributedOptimizer.get_parameter_state_dp_zero

    @functools.wraps(gather)
    def get_parameter_state_dp_zero(self, *args, **kwargs):
        if getattr(self, "data_parallel_group_gloo", None) is not None:
            kwargs["use_gloo_comm"] = True
            args = args[1:] if args else args  # use_gloo_comm is the first positional
        return gather(self, *args, **kwargs)

    DistributedOptimizer.get_parameter_state_dp_zero = get_parameter_state_dp_zero


def _data_loaders_with_own_generator() -> None:
    # megatron/training/datasets/data_samplers.py build_pretraining_data_loader builds torch
    # DataLoaders without a generator, so every iterator they start (at start-up, on resume, at
    # each new pass of an evaluation set) draws its base seed from the default CPU generator.
    # On the CPU that generator is also the device generator dropout draws from: a resumed run
    # would make one more draw than the uninterrupted one did and its dropout masks differ from
    # there on. Give each loader its own generator (the seeds only matter to loader workers).
    import megatron.training.training as training

    build = training.build_pretraining_data_loader

    @functools.wraps(build)
    def build_pretraining_data_loader(*args, **kwargs):
        loader = build(*args, **kwargs)
        if loader is not None and loader.generator is None:
            loader.generator = torch.Generator().manual_seed(training.get_args().seed)
        return loader

    training.build_pretraining_data_loader = build_pretraining_data_loader


def _memory_report_from_rss() -> None:
    # megatron/training/utils/common_utils.py report_memory (called by training_log in
    # megatron/training/training.py after the first iterations and around checkpoint saves)
    # reads torch.cuda.memory_allocated & co., which are 0 on the CPU. Report the process RSS.
    import megatron.training.training as training
    from megatron.core import mpu
    from megatron.core.utils import get_pg_rank

    def report_memory(name, process_group=None):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        with open(f"/proc/{os.getpid()}/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2.0**20
        rank0 = (get_pg_rank(process_group) if process_group is not None
                 else mpu.get_data_parallel_rank()) == 0
        if rank0:
            print(f"[Rank {torch.distributed.get_rank()}] {name} memory (MB) | rss: {rss:.2f}"
                  f" | max rss: {peak:.2f}", flush=True)

    training.report_memory = report_memory


def _cpu_torch_in_training_modules() -> None:
    # torch.cuda.* calls and device='cuda' tensors that the CPU run reaches, by module. Those
    # marked (*) are not reached by the tested flags (precaution for flags that reach them).
    for module in (
        # training.py: pretrain (start-time all_reduce), get_model (DDP init stream),
        # train_step/evaluate/training_log (loss dicts), build_train_valid_test_data_loaders
        # (do_train flags), checkpoint_and_decide_exit (exit-duration flag), empty_cache.
        "megatron.training.training",
        # models/dist_utils.py (model-config path, cfg.model set): the DDP init stream.
        "megatron.training.models.dist_utils",
        # checkpointing.py: read_metadata (iteration all_reduce), get_rng_state and
        # load_checkpoint (the "CUDA" RNG state saved and restored: on the CPU, the CPU's).
        "megatron.training.checkpointing",
        # utils/common_utils.py: calc_params_l2_norm, reduce_max_stat_across_model_parallel_group,
        # logical_and_across_model_parallel_group.
        "megatron.training.utils.common_utils",
        # core/utils.py local_multi_tensor_l2_norm (grad norm without apex): device="cuda".
        "megatron.core.utils",
        # core/timers.py: Timer.start/stop(barrier) synchronize; _get_elapsed_time_all_ranks.
        "megatron.core.timers",
        # core/rerun_state_machine.py: validate_result and the state it saves with the RNG.
        "megatron.core.rerun_state_machine",
        # core/dist_checkpointing/strategies/filesystem_async.py preload_tensors: synchronize
        # ("Torch not compiled with CUDA enabled" on the first checkpoint save).
        "megatron.core.dist_checkpointing.strategies.filesystem_async",
        # ...strategies/state_dict_saver.py save_state_dict_async_finalize / verify_reuse: flags
        # all_reduced on the current device; (*) strategies/fully_parallel.py (fully parallel
        # save and load), strategies/async_utils.py (--async-save), exchange_utils.py:
        # synchronize, flags and exchange buffers.
        "megatron.core.dist_checkpointing.strategies.state_dict_saver",
        "megatron.core.dist_checkpointing.strategies.fully_parallel",
        "megatron.core.dist_checkpointing.strategies.async_utils",
        "megatron.core.dist_checkpointing.exchange_utils",
        # core/optimizer: found_inf/_scale_one/flag tensors (optimizer.py), total_norm and
        # count_zeros buffers (clip_grads.py), gather buffers (distrib_optimizer.py).
        "megatron.core.optimizer.optimizer",
        "megatron.core.optimizer.clip_grads",
        "megatron.core.optimizer.distrib_optimizer",
        # core/distributed: (*) DDP's communication stream (distributed_data_parallel.py), and
        # the buffers' stream waits and all-gather buffers (param_and_grad_buffer.py).
        "megatron.core.distributed.distributed_data_parallel",
        "megatron.core.distributed.param_and_grad_buffer",
        # core/pipeline_parallel: total_num_tokens (schedules.py), P2P shape buffers and
        # synchronize (p2p_communication.py).
        "megatron.core.pipeline_parallel.schedules",
        "megatron.core.pipeline_parallel.p2p_communication",
    ):
        use_cpu_torch(module)


@functools.cache
def apply_cpu_training_adaptations() -> None:
    """Apply every training-loop adaptation once, and only on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    _initialize_without_cuda()
    _no_jit_warmup()
    _prebuilt_dataset_helpers()
    _no_device_architecture()
    _model_stays_on_cpu()
    _optimizer_accepts_cpu_params()
    _optimizer_state_gathers_on_cpu()
    _tied_embeddings_across_stages_on_cpu()
    _data_loaders_with_own_generator()
    _memory_report_from_rss()
    _cpu_torch_in_training_modules()
