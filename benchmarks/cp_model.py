"""Context parallelism for the comparison: full replicated weights, tokens sharded, K/V gathered.

megatron-core's context parallel attention exists only in Transformer Engine (no CPU path), so
this is the same scheme built from megatron_tsp's pieces: every rank holds ALL weights (nothing
moves but activations' keys/values), its zigzag shard of the tokens (megatron_tsp.layout), and
all-gathers the keys/values of every layer in forward (kind `cp_kv`; the autograd of the gather
reduce-scatters dK/dV back, kind `cp_kv_grad`) to run megatron_tsp's zigzag causal attention.
Activations are kept for backward as autograd keeps them (no recompute), as Megatron's CP does.
Weight gradients are partial (local tokens only) and summed over the group with one all-reduce
of a flat gradient buffer (kind `cp_weight_grads`), as Megatron's DDP does for a CP group.

Legend: s = S/D local tokens, b batch, h hidden, nh/ng query/kv heads, hd head dim, F FFN size.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from megatron_tsp.comm import all_reduce_sum
from megatron_tsp.layers.attention import zigzag_causal_attention
from megatron_tsp.layers.mlp import swiglu_mlp
from megatron_tsp.layers.norm import rms_norm
from megatron_tsp.layers.rotary import apply_rotary, rotary_cos_sin
from megatron_tsp.layout import gather_to_full
from megatron_tsp.config import Qwen3Config
from megatron_tsp.transfer_kinds import CP_KV, CP_WEIGHT_GRADS


def _layer(x, w: Dict[str, torch.Tensor], cfg: Qwen3Config, cos, sin):
    """One decoder layer on the local tokens: x [s, b, h] -> [s, b, h], full weights `w`."""
    s, b, _ = x.shape
    ng, hd, eps = cfg.num_query_groups, cfg.kv_channels, cfg.norm_epsilon
    hpg = cfg.num_attention_heads // ng
    a = rms_norm(x, w["input_layernorm.weight"], eps)
    qkv = (a @ w["self_attention.linear_qkv.weight"].t()).view(s, b, ng, hpg + 2, hd)
    q = qkv[:, :, :, :hpg].reshape(s, b, ng * hpg, hd)
    q = apply_rotary(rms_norm(q, w["self_attention.q_layernorm.weight"], eps), cos, sin)
    k = apply_rotary(rms_norm(qkv[:, :, :, hpg], w["self_attention.k_layernorm.weight"], eps),
                     cos, sin)
    # [s, 2, b, ng, hd] -> [S, 2, b, ng, hd]: only the kv heads, never repeated for GQA
    kv = gather_to_full(torch.stack([k, qkv[:, :, :, hpg + 1]], dim=1), dim=0, kind=CP_KV)
    o = zigzag_causal_attention(q, kv)
    x = x + o @ w["self_attention.linear_proj.weight"].t()
    m = rms_norm(x, w["pre_mlp_layernorm.weight"], eps)
    return x + swiglu_mlp(m, w["mlp.linear_fc1.weight"], w["mlp.linear_fc2.weight"])


class CPQwen3Model(nn.Module):
    """Qwen3 with every weight on every rank (GPTModel names, unpadded vocabulary)."""

    def __init__(self, config: Qwen3Config, full_weights: Dict[str, torch.Tensor],
                 device: torch.device):
        super().__init__()
        self.config = config
        self.names = list(full_weights)
        self.weights = nn.ParameterList(nn.Parameter(t.to(device, copy=True))
                                        for t in full_weights.values())
        # one flat gradient buffer, the .grad of every weight a view into it: the all-reduce
        # then needs no extra copy (Megatron DDP's grad buffer)
        self.grad_buffer = torch.zeros(sum(p.numel() for p in self.weights), device=device)
        offset = 0
        for p in self.weights:
            p.grad = self.grad_buffer[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def _named(self) -> Dict[str, torch.Tensor]:
        return dict(zip(self.names, self.weights))

    def forward(self, input_ids, position_ids, labels) -> torch.Tensor:
        """input_ids, position_ids, labels [b, s] (local zigzag shard) -> loss [b, s] fp32."""
        cfg, w = self.config, self._named()
        cos, sin = rotary_cos_sin(position_ids, cfg.kv_channels, cfg.rotary_base)
        table = w["embedding.word_embeddings.weight"]
        hidden = F.embedding(input_ids.t(), table)
        for i in range(cfg.num_layers):
            prefix = f"decoder.layers.{i}."
            layer = {n[len(prefix):]: t for n, t in w.items() if n.startswith(prefix)}
            hidden = _layer(hidden, layer, cfg, cos, sin)
        hidden = rms_norm(hidden, w["decoder.final_layernorm.weight"], cfg.norm_epsilon)
        logits = hidden @ w.get("output_layer.weight", table).t()  # [s, b, V]
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.t().flatten(), reduction="none")
        return loss.view(labels.shape[1], labels.shape[0]).t()

    def all_reduce_grads(self) -> None:
        """Sum the partial weight gradients (local tokens only) over the group."""
        all_reduce_sum(self.grad_buffer, CP_WEIGHT_GRADS)
