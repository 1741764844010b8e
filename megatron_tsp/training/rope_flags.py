"""The rotary-embedding flags of a launch: Megatron's RoPE variants TSP does not have, refused by
name, and a checkpoint's rotary embedding (plain RoPE or YaRN) as the default of every rotary
flag not given."""

import argparse
from typing import Set

from megatron_tsp.config_adapters import POSITION_FLAG, ROPE_FLAGS, YARN_FLAGS, yarn_from_args

# Megatron's RoPE variants that TSP's rotary embedding does not have: flag -> (value that
# leaves it off, why)
_UNSUPPORTED_ROPE_FLAGS = {
    "--rotary-percent": (1.0, "TSP rotates the whole head, as Qwen3 does"),
    "--rotary-interleaved": (False, "TSP rotates the two halves of every head, as Qwen3 does"),
    "--use-rope-scaling": (False, "it is Llama 3.x's scaling; Qwen3 extends its context with "
                                  f"{POSITION_FLAG} yarn"),
    "--rope-scaling-factor": (8.0, "it is Llama 3.x's (--use-rope-scaling); YaRN's is "
                                   "--rotary-scaling-factor"),
    "--rotary-seq-len-interpolation-factor": (None, f"use {POSITION_FLAG} yarn"),
    "--no-rope-freq": (None, "every Qwen3 layer applies RoPE"),
}


def check_rope_flags(args) -> None:
    """Megatron's RoPE flags TSP cannot honour (the position embedding and the YaRN flags are
    checked where they are read: yarn_from_args)."""
    for flag, (off, why) in _UNSUPPORTED_ROPE_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value != off:
            raise ValueError(f"{flag} {value} is not supported: {why}")
    if args.use_rotary_position_embeddings and args.position_embedding_type != "rope":
        raise ValueError("--use-rotary-position-embeddings makes Megatron replace "
                         f"{POSITION_FLAG} {args.position_embedding_type} with rope; leave it out")


def rope_from_checkpoint(args, saved, explicit: Set[str]) -> None:
    """A checkpoint's rotary embedding is the default of every rotary flag not given: a resumed
    YaRN run keeps it whole (it never falls back to plain RoPE or to Megatron's YaRN defaults
    because some flags were left out), and the flags given change it (YaRN on a plain
    checkpoint extends its context; --position-embedding-type rope drops YaRN). `saved`: the
    checkpoint's args, or None without one. Then what the flags make of it must be a rotary
    embedding TSP runs (ValueError naming the flag)."""
    if hasattr(saved, "position_embedding_type"):
        saved = with_yarn_defaults(saved)
        for flag, dest in ROPE_FLAGS.items():
            if flag not in explicit:
                setattr(args, dest, getattr(saved, dest))
        if args.position_embedding_type == "rope":
            for flag, dest in ROPE_FLAGS.items():
                if flag != POSITION_FLAG and flag not in explicit:
                    setattr(args, dest, None)
    yarn_from_args(args)


def with_yarn_defaults(saved):
    """A checkpoint's args with Megatron's defaults (None) for the YaRN flags it does not
    record (a Megatron older than them)."""
    return argparse.Namespace(**{**{dest: None for dest, _ in YARN_FLAGS.values()},
                                 **vars(saved)})
