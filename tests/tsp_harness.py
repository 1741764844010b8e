"""Shared bodies for TSP tests: run one training step of the TSP model on a fixed batch.

Every rank draws the same full batch from the seed, keeps its zigzag shard and returns what it
computed gathered back to full shape, so results at different D compare directly.
"""

import torch

from megatron_tsp import comm
from megatron_tsp.layers.linear import gather_full
from megatron_tsp.layers.vocab import masked_token_mean
from megatron_tsp.layout import scatter_to_local
from megatron_tsp.config import Qwen3Config
from megatron_tsp.models.qwen3 import TSPQwen3Model


def tiny_config(heads=8, groups=2, tied=True, **changes) -> Qwen3Config:
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=heads, num_query_groups=groups,
                kv_channels=8, ffn_hidden_size=64, vocab_size=500, tie_word_embeddings=tied)
    base.update(changes)
    return Qwen3Config(**base)


def full_batch(vocab_size: int, batch: int, seq_length: int, seed: int = 1234):
    """tokens, labels, position ids [b, S] and a loss mask with a few tokens masked out."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch, seq_length + 1), generator=generator)
    loss_mask = (torch.rand(batch, seq_length, generator=generator) > 0.1).float()
    positions = torch.arange(seq_length).expand(batch, seq_length)
    return tokens[:, :-1], tokens[:, 1:], positions, loss_mask


def train_step(model: TSPQwen3Model, batch, documents=None):
    """Forward + backward on the local shard (of packed `documents`, made for this rank's
    chunks, if given); returns (global mean loss, local per-token loss)."""
    tokens, labels, positions, loss_mask = (scatter_to_local(t, dim=1) for t in batch)
    loss = model(tokens, positions, labels=labels, documents=documents)
    to_backprop, mean = masked_token_mean(loss, loss_mask)
    to_backprop.backward()
    comm.all_reduce_replicated_grads(model)
    return mean, loss


def full_grads(model: TSPQwen3Model):
    return {name: gather_full(p.grad, p) for name, p in model.named_parameters()}


def gptmodel_step(config: Qwen3Config, weights, batch: int, seq_length: int):
    """Plain megatron-core GPTModel (local spec, TP 1, the real vocabulary unpadded) with the
    given full weights, one step on the same batch: (mean loss, {name: gradient})."""
    return gptmodel_on(config, weights, full_batch(config.vocab_size, batch, seq_length))


def gptmodel_on(config: Qwen3Config, weights, batch, attention_mask=None, token_count=None):
    """gptmodel_step on a given full batch (tokens, labels, positions, loss mask) with
    GPTModel's optional attention mask [b, 1, S, S] (True: masked out): backpropagates the
    masked loss sum over `token_count` (by default the batch's own count) and returns it with
    {name: gradient}."""
    from megatron_tsp.models.mcore_gpt import build_mcore_qwen3
    model = build_mcore_qwen3(config.replace(make_vocab_size_divisible_by=1))
    assert model.vocab_size == config.vocab_size
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), missing
    tokens, labels, positions, loss_mask = batch
    loss = model(tokens, positions, attention_mask, labels=labels)
    mean = (loss * loss_mask).sum() / (loss_mask.sum() if token_count is None else token_count)
    mean.backward()
    return mean.item(), {name: p.grad.clone() for name, p in model.named_parameters()}
