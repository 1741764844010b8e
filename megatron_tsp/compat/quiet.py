"""Keep a TSP run's log to what concerns its user.

megatron-core 0.19.2 and torch 2.13 warn about conditions a TSP user can neither change nor needs
to: each such warning is filtered by its message and the module that emits it, so that any other
warning, of these modules too, is still shown. Of Megatron's own output only a debug label is
dropped; its argument dump, iteration lines and reports are printed as Megatron prints them.
"""

import functools
import warnings

# (message regex, category, emitting module): why the warning does not concern a TSP user
_NOT_THE_USERS_CONCERN = (
    # hybrid_layer_specs.py builds a MoE spec at import, without Transformer Engine (always on
    # CPU) from its local fallback; TSP's Qwen3 is dense and builds no expert
    (r"Only transformer-engine>=1\.7\.0 supports MoE experts, but your version is ",
     UserWarning, r"megatron\.core\.extensions\.transformer_engine_spec_provider\Z"),
    # pretrain_cfg_container_from_args advises a Megatron ModelConfig; TSP's model is not a
    # Megatron model class and is built, as Megatron supports, by its model provider
    (r"\s*It is recommended to use a ModelConfig ", UserWarning,
     r"megatron\.training\.argument_utils\Z"),
    # get_megatron_optimizer imports the MiMo package for an isinstance check on every build;
    # nothing of MiMo is used
    (r"MimoModelConfig is experimental ", UserWarning,
     r"megatron\.core\.models\.mimo\.config\.base_configs\Z"),
    # Megatron's timers, DDP buffers and tensor-parallel mappings call the deprecated name
    # (megatron_tsp does not); it still does the same all-gather
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated\. ", FutureWarning,
     r"torch\.distributed\.c10d_logger\Z"),
    # build_pretraining_data_loader always asks for pinned batches; on a machine without an
    # accelerator there is nothing to pin for and torch rightly skips it
    (r"'pin_memory' argument is set as true but no accelerator is found", UserWarning,
     r"torch\.utils\.data\.dataloader\Z"),
    # generate_qwen3.py reads the checkpoint's metadata before any process group exists, in one
    # process by intent, so as to refuse a bad launch before any work
    (r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to "
     r"load in a single process", UserWarning, r"torch\.distributed\.checkpoint\.utils\Z"),
    # Megatron's dist_checkpointing loads through torch's ShardedTensor API and its old argument
    # order; the checkpoint is read correctly
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning,
     r"torch\.distributed\.checkpoint\.(planner_helpers|default_planner)\Z"),
    (r"The argument order of load has been changed", UserWarning,
     r"torch\.distributed\.checkpoint\.logger\Z"),
    # TransformerConfig's default CUDA graph scope, which no TSP run uses
    (r"full scope is deprecated", UserWarning,
     r"megatron\.core\.transformer\.transformer_config\Z"),
)
# theoretical_memory_usage.py report_theoretical_memory prints the name of the function it
# calls before its report, a leftover that lands on its own line or in another rank's
_DEBUG_LABELS = ("compute_activation_memory_without_sp", "compute_activation_memory with SP")


@functools.cache
def apply_warning_filters() -> None:
    """Before megatron is imported: the MoE warning is raised at import."""
    for message, category, module in _NOT_THE_USERS_CONCERN:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@functools.cache
def apply_quiet_memory_report() -> None:
    import megatron.training.theoretical_memory_usage as memory_usage

    show = memory_usage.print_rank_0

    def print_rank_0(message, *args, **kwargs):
        if message not in _DEBUG_LABELS:
            show(message, *args, **kwargs)

    memory_usage.print_rank_0 = print_rank_0
