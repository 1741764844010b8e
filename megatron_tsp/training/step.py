"""Forward step and loss for Megatron's training loop, and the TSP model provider.

The loss equals a single device's on the same batch: each rank sums its local token losses and
counts, the pair is summed over the TSP group, and each rank backpropagates its local sum over
the global count (Megatron's schedule divides by the count it is handed).
"""

import resource
import time
from functools import partial

import torch
from megatron.training import get_args, get_timers, get_tokenizer
from megatron.training.argument_utils import core_transformer_config_from_args

from megatron_tsp.checkpoint import checkpoint_args, checkpoint_to_load
from megatron_tsp import parallel_state as ps
from megatron_tsp.layers.vocab import global_loss_totals
from megatron_tsp.models.qwen3 import TSPQwen3Model
from megatron_tsp.config_adapters import qwen3_config_from_args
from megatron_tsp.training import nonfinite
from megatron_tsp.training.data import get_local_batch


def model_provider(pre_process=True, post_process=True, vp_stage=None, config=None,
                   pg_collection=None):
    """The TSP Qwen3 model of this pipeline stage, initialised from --seed whatever D is."""
    args = get_args()
    config = config or core_transformer_config_from_args(args)
    vocab_size = model_vocabulary(args, get_tokenizer().vocab_size)
    args.tsp_vocab_size = vocab_size  # saved with the checkpoint: the unpadded vocabulary
    model = TSPQwen3Model(qwen3_config_from_args(args, vocab_size), config,
                          pre_process=pre_process, post_process=post_process,
                          dtype=config.params_dtype, pg_collection=pg_collection,
                          recompute_activations=args.tsp_recompute_activations)
    model.init_weights(args.seed)
    return model


def model_vocabulary(args, tokenizer_size: int) -> int:
    """The vocabulary the model is built with: the tokenizer's, or that of the checkpoint it
    loads. A released model's table may be larger than its tokenizer (Qwen3: 151,936 rows for
    151,669 tokens) and transformers scores every row, so the checkpoint's rows are all kept; a
    tokenizer larger than the table is refused (its ids past the table have no row). Megatron
    loads vocabulary tables across paddings, so the tokenizer's size would otherwise decide
    silently how many of the checkpoint's rows are scored. --finetune resets only the iteration
    and the optimizer, so it is checked too, and so is --pretrained-checkpoint, which Megatron
    loads (as a finetune) when --load holds no checkpoint."""
    source = checkpoint_to_load(args.load, getattr(args, "pretrained_checkpoint", None))
    if source is None:
        return tokenizer_size
    flag, load = source
    saved = getattr(checkpoint_args(load), "tsp_vocab_size", None)
    if saved is None:
        return tokenizer_size
    if tokenizer_size > saved:
        raise ValueError(f"{flag} {load}: the checkpoint's vocabulary has {saved} entries, the "
                         f"tokenizer has {tokenizer_size}, more than the checkpoint has rows"
                         f"{' (--finetune keeps the vocabulary)' if args.finetune else ''}")
    return saved


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """(local loss sum, global token count, {'lm loss': [global sum, global count]})."""
    losses = output_tensor.float().reshape(-1)
    loss_mask = loss_mask.float().reshape(-1)
    local_sum = nonfinite.note_loss(torch.sum(losses * loss_mask))
    totals = global_loss_totals(local_sum, loss_mask.sum())
    num_tokens = totals[1].to(torch.int)
    return local_sum, num_tokens, {"lm loss": totals}


class _ThroughputReport:
    """tokens/s of the whole job over the last log interval, and the peak memory of each rank of
    the first TSP group (GPU: max allocated; CPU: peak resident set), printed by rank 0."""

    def __init__(self):
        self.micro_batches, self.last = 0, None

    def step(self) -> None:
        args = get_args()
        self.last = self.last or time.perf_counter()
        self.micro_batches += 1
        per_iteration = args.global_batch_size // (args.micro_batch_size * args.data_parallel_size)
        interval = per_iteration * args.log_interval
        if self.micro_batches % interval:
            return
        now = time.perf_counter()
        tokens = interval * args.micro_batch_size * args.seq_length * args.data_parallel_size
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:  # ru_maxrss is in KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # every rank of a TSP group runs its forward steps in lockstep, so gathering here is safe
        peaks = [None] * ps.get_tsp_world_size()
        torch.distributed.all_gather_object(peaks, peak, group=ps.get_tsp_group())
        if torch.distributed.get_rank() == 0:
            print(f" tokens/s: {tokens / (now - self.last):.1f} | peak memory per TSP rank "
                  f"(MiB): {', '.join(f'{p:.1f}' for p in peaks)}", flush=True)
        self.last = now


_report = _ThroughputReport()


def forward_step(data_iterator, model):
    timers = get_timers()
    timers("batch-generator", log_level=2).start()
    tokens, labels, loss_mask, positions, documents = get_local_batch(
        data_iterator, getattr(model, "vp_stage", None))
    timers("batch-generator").stop()
    _report.step()
    output = model(tokens, positions, None, labels=labels, documents=documents)
    return output, partial(loss_func, loss_mask)
