"""Vocabulary-sharded embedding, streamed output layer and cross-entropy.

Legend: n = s*b local tokens, Vd = Vp / D rows per shard (Vp: Megatron's padded vocabulary).
The table shards circulate in the same ring as the MLP's, so the traffic per rank is the table
(Vp x h), independent of sequence length. The output layer keeps an online log-sum-exp per token
over the visiting shards, so the [n x Vp] logits never exist at once. Logits of padded rows
(ids >= the real vocabulary size) are masked, so the loss equals the unpadded model's at any D.
"""

from typing import Tuple

import torch
from torch import nn

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from megatron_tsp.comm import ShardRing
from megatron_tsp.layers.linear import ShardedWeight
from megatron_tsp.transfer_kinds import LOSS, VOCAB_WEIGHTS


def rows_in_shard(ids: torch.Tensor, shard: int, rows: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which ids fall in a shard, and their row within it (clamped into the shard where the id
    lies elsewhere). Masks rather than boolean indexing: no shape depends on the data, so the
    device never waits for the host."""
    local = ids - shard * rows
    return (local >= 0) & (local < rows), local.clamp(0, rows - 1)


class _EmbeddingRing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, table):
        ctx.save_for_backward(ids, table)
        out = torch.zeros(ids.shape + (table.shape[1],), dtype=table.dtype, device=table.device)
        for visit in ShardRing([table], VOCAB_WEIGHTS):
            hit, row = rows_in_shard(ids, visit.index, table.shape[0])
            out = torch.where(hit.unsqueeze(-1), visit.tensors[0][row], out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        ids, table = ctx.saved_tensors
        # a visit's gradient is an index-add of grad_out: only the accumulators go round
        ring = ShardRing([table], VOCAB_WEIGHTS, accumulate=True, travel=False)
        for visit in ring:
            hit, row = rows_in_shard(ids, visit.index, table.shape[0])
            grad = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
            hits = torch.where(hit.unsqueeze(-1), grad_out, 0).float()
            grad.index_add_(0, row.reshape(-1), hits.reshape(-1, table.shape[1]))
            visit.accumulate([grad])
        return None, ring.owned_grads()[0].to(table.dtype)


class TSPEmbedding(nn.Module):
    """Megatron's LanguageModelEmbedding parameter (word_embeddings.weight [Vp/D, h] shard)."""

    def __init__(self, padded_vocab_size: int, hidden_size: int, dtype=torch.float32):
        super().__init__()
        self.word_embeddings = ShardedWeight(padded_vocab_size, hidden_size, 0, dtype=dtype)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [b, s] -> embeddings [s, b, h] (Megatron's layout)."""
        # contiguous: the output takes the ids' layout, and pipeline sends need [s, b, h] dense
        return _EmbeddingRing.apply(input_ids.t().contiguous(), self.word_embeddings.weight)


def masked_logits(x2d, shard, index, vocab_size):
    logits = (x2d @ shard.t()).float()
    first = index * shard.shape[0]
    if first + shard.shape[0] > vocab_size:
        logits[:, max(vocab_size - first, 0):] = float("-inf")
    return logits


class _VocabCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, labels, vocab_size):
        x2d, labels1d = x.reshape(-1, x.shape[-1]), labels.reshape(-1)
        n = x2d.shape[0]
        running_max = torch.full((n,), torch.finfo(torch.float32).min, device=x.device)
        sum_exp = torch.zeros(n, device=x.device)
        target = torch.zeros(n, device=x.device)
        for visit in ShardRing([table], VOCAB_WEIGHTS):
            logits = masked_logits(x2d, visit.tensors[0], visit.index, vocab_size)
            hit, row = rows_in_shard(labels1d, visit.index, table.shape[0])
            target = torch.where(hit, logits.gather(1, row.unsqueeze(1)).squeeze(1), target)
            new_max = torch.maximum(running_max, logits.max(dim=-1).values)
            # in place: the [n, Vd] fp32 logits are the only tensor of that size
            shard_sum = logits.sub_(new_max.unsqueeze(1)).exp_().sum(dim=-1)
            sum_exp = sum_exp * torch.exp(running_max - new_max) + shard_sum
            running_max = new_max
            del logits  # before the next shard's exist
        log_z = running_max + torch.log(sum_exp)
        ctx.vocab_size = vocab_size
        ctx.save_for_backward(x, table, labels, log_z)
        return (log_z - target).view(labels.shape)

    @staticmethod
    def backward(ctx, grad_loss):
        x, table, labels, log_z = ctx.saved_tensors
        x2d, labels1d = x.reshape(-1, x.shape[-1]), labels.reshape(-1)
        x2d_fp32 = x2d.float()
        grad_loss = grad_loss.reshape(-1, 1).float()
        grad_x = torch.zeros_like(x2d_fp32)
        ring = ShardRing([table], VOCAB_WEIGHTS, accumulate=True)
        for visit in ring:
            shard = visit.tensors[0]
            # the logits exactly as forward computed them (in the weights' dtype): log_z was
            # taken over those, and a confident token's 1 - p is lost in any other rounding
            probs = masked_logits(x2d, shard, visit.index, ctx.vocab_size)
            probs = probs.sub_(log_z.unsqueeze(1)).exp_()  # in place: [n, Vd] fp32 is the peak
            hit, row = rows_in_shard(labels1d, visit.index, table.shape[0])
            probs.scatter_add_(1, row.unsqueeze(1), -hit.float().unsqueeze(1))
            probs *= grad_loss
            visit.accumulate([probs.t() @ x2d_fp32])
            grad_x += probs @ shard.float()  # while the weight gradient travels on
            del probs  # before the next shard's logits exist: one [n, Vd] fp32 at a time
        return (grad_x.view(x.shape).to(x.dtype), ring.owned_grads()[0].to(table.dtype),
                None, None)


def vocab_cross_entropy(hidden: torch.Tensor, table: torch.Tensor, labels: torch.Tensor,
                        vocab_size: int) -> torch.Tensor:
    """hidden [s, b, h], labels [s, b] -> per-token loss [s, b] in fp32."""
    return _VocabCrossEntropy.apply(hidden, table, labels, vocab_size)


@torch.no_grad()
def vocab_logits(hidden: torch.Tensor, table: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """hidden [s, b, h] -> full logits [s, b, Vp] of the local tokens (evaluation only)."""
    blocks = [None] * ps.get_tsp_world_size()
    x2d = hidden.reshape(-1, hidden.shape[-1])
    for visit in ShardRing([table], VOCAB_WEIGHTS):
        blocks[visit.index] = masked_logits(x2d, visit.tensors[0], visit.index, vocab_size)
    return torch.cat(blocks, dim=-1).view(hidden.shape[:-1] + (-1,))


def global_loss_totals(local_sum: torch.Tensor, token_count: torch.Tensor) -> torch.Tensor:
    """[loss sum, token count] of the whole sequence: this rank's (detached) added over the TSP
    group, the one reduction every loss of the package goes through."""
    totals = torch.stack([local_sum.detach().float(), token_count.detach().float()])
    comm.all_reduce_sum(totals, LOSS)
    return totals


def masked_token_mean(loss: torch.Tensor, loss_mask: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-token local losses -> (what this rank backpropagates, the global mean to report).

    Each rank backpropagates its local sum over the GLOBAL token count, so the gradients add up
    to those of the single-device mean; the reported mean is summed over the TSP group.
    """
    local_sum = (loss.float() * loss_mask).sum()
    totals = global_loss_totals(local_sum, loss_mask.sum())
    return local_sum / totals[1], totals[0] / totals[1]
