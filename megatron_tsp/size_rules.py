"""The size rules: which model shapes, group sizes, sequence lengths and world sizes can run.

Every rule lives here once, and the launcher (training/arguments.py), the planner, the benchmark,
the model config and the zigzag layout all ask these functions, so none of them accepts what
another refuses: the planner never recommends a layout the launcher would stop. Each function
returns the first rule broken, as a message naming the flag that sets the offending size, or None
when every rule holds; `refuse` turns that answer into the ValueError users see. The messages
name the launcher's flags unless a `Flags` of another command line (the benchmark's) is given.
"""

from dataclasses import dataclass
from typing import Optional

# Qwen3Config fields that are sizes; each is set by the flag of its name (--num-layers, ...)
SIZE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
               "kv_channels", "ffn_hidden_size", "vocab_size", "max_position_embeddings")


@dataclass(frozen=True)
class Flags:
    """The flags that set the group size, the sequence length and the pipeline size."""

    group_size: str = "--tsp-size"
    seq_length: str = "--seq-length"
    pipeline_size: str = "--pipeline-model-parallel-size"


LAUNCHER = Flags()


def flag_of(field: str) -> str:
    """The flag that sets a size field."""
    return "--" + field.replace("_", "-")


def refuse(problem: Optional[str]) -> None:
    """Raise the ValueError a broken rule means for the user."""
    if problem is not None:
        raise ValueError(problem)


def shape_problem(config) -> Optional[str]:
    """Rules of the model shape alone (a Qwen3Config or anything with its fields)."""
    for field in SIZE_FIELDS:
        value = getattr(config, field)
        if value is None or value <= 0:
            return f"{flag_of(field)} must be a positive integer, got {value}"
    if config.num_attention_heads % config.num_query_groups:
        return (f"--num-attention-heads ({config.num_attention_heads}) must be a multiple of "
                f"--num-query-groups ({config.num_query_groups})")
    if config.kv_channels % 2:
        return (f"--kv-channels must be even, got {config.kv_channels}: RoPE rotates the two "
                "halves of every head")
    return None


def positions_problem(config, seq_length: int, flags: Flags = LAUNCHER) -> Optional[str]:
    """Rules of the sequence length that hold whatever the layout."""
    if seq_length <= 0:
        return f"{flags.seq_length} must be positive, got {seq_length}"
    if seq_length > config.max_position_embeddings:
        return (f"{flags.seq_length} ({seq_length}) exceeds --max-position-embeddings "
                f"({config.max_position_embeddings})")
    return None


def sequence_problem(seq_length: int, tsp_size: int, flags: Flags = LAUNCHER) -> Optional[str]:
    """The zigzag layout's rule: 2D equal chunks per sequence."""
    if seq_length <= 0 or seq_length % (2 * tsp_size):
        return (f"{flags.seq_length} ({seq_length}) must be a positive multiple of 2 x "
                f"{flags.group_size} ({2 * tsp_size}): the zigzag layout cuts each sequence "
                "into 2D equal chunks")
    return None


def group_problem(tsp_size: int, pipeline_size: int = 1,
                  flags: Flags = LAUNCHER) -> Optional[str]:
    if tsp_size < 1:
        return f"{flags.group_size} must be >= 1, got {tsp_size}"
    if pipeline_size < 1:
        return f"{flags.pipeline_size} must be >= 1, got {pipeline_size}"
    return None


def world_problem(world_size: int, tsp_size: int, pipeline_size: int = 1,
                  flags: Flags = LAUNCHER) -> Optional[str]:
    if world_size % (tsp_size * pipeline_size):
        return (f"world size ({world_size}) must be divisible by {flags.group_size} "
                f"({tsp_size}) x {flags.pipeline_size} ({pipeline_size})")
    return None


def tsp_problem(config, tsp_size: int, seq_length: Optional[int] = None,
                world_size: Optional[int] = None, pipeline_size: int = 1,
                flags: Flags = LAUNCHER) -> Optional[str]:
    """The first rule a TSP run of `config` at D = tsp_size breaks (the sequence and world size
    rules only when those are given)."""
    D, heads, groups = tsp_size, config.num_attention_heads, config.num_query_groups
    problem = shape_problem(config) or group_problem(D, pipeline_size, flags)
    if problem:
        return problem
    if heads % D:
        return f"--num-attention-heads ({heads}) must be divisible by {flags.group_size} ({D})"
    # a step's kv groups are either whole on one owner or split over D/G owners
    if groups % D and D % groups:
        return (f"--num-query-groups ({groups}) must be a multiple or a divisor of "
                f"{flags.group_size} ({D})")
    # linear_qkv's rows are cut D ways, as Megatron's TP cuts them
    if (heads + 2 * groups) * config.kv_channels % D:
        return (f"--kv-channels ({config.kv_channels}) x (heads + 2 x query groups) must be "
                f"divisible by {flags.group_size} ({D})")
    if config.ffn_hidden_size % D:
        return (f"--ffn-hidden-size ({config.ffn_hidden_size}) must be divisible by "
                f"{flags.group_size} ({D})")
    if seq_length is not None:
        problem = (positions_problem(config, seq_length, flags)
                   or sequence_problem(seq_length, D, flags))
        if problem:
            return problem
    if world_size is not None:
        return world_problem(world_size, D, pipeline_size, flags)
    return None


def megatron_problem(config, tp: int, cp: int, seq_length: int,
                     flags: Flags = LAUNCHER) -> Optional[str]:
    """The first rule broken by the Megatron layouts TSP is compared with: tensor parallel
    (with sequence parallel) over tp ranks, context parallel (zigzag chunks) over cp."""
    problem = shape_problem(config) or positions_problem(config, seq_length, flags)
    if problem:
        return problem
    for field in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
        if getattr(config, field) % tp:
            return (f"{flag_of(field)} ({getattr(config, field)}) must be divisible by "
                    f"{flags.group_size} ({tp}) for Megatron's tensor parallelism")
    if seq_length % (2 * cp) or seq_length % tp:
        return (f"{flags.seq_length} ({seq_length}) must be divisible by the sequence shards "
                f"(2 x {cp} context-parallel chunks, {tp} sequence-parallel ranks)")
    return None
