"""A fused-attention core for megatron-core's GPTModel (local spec): the tp, tp-sp and single runs.

The local spec's DotProductAttention materialises the [b, heads/D, S, S] scores and keeps the
softmax for backward, so on CPU it alone would be O(S^2) memory and the comparison would be about
attention kernels, not parallelism. On GPU Megatron runs Transformer Engine's fused (flash)
attention, which keeps O(S). Its CPU stand-in here is torch's scaled_dot_product_attention
(flash kernel on CPU: keeps only the log-sum-exp), the same kernel megatron_tsp's attention uses.
It goes into megatron_tsp.models.mcore_gpt.build_mcore_qwen3 as its `core_attention`; everything
else is megatron-core's own: linears, norms, RoPE, embedding, vocab-parallel loss.
"""

import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention


class FusedDotProductAttention(DotProductAttention):
    """DotProductAttention whose core is SDPA (causal, GQA without repeating kv heads)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np * hn]."""
        sq, b = query.shape[:2]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 scale=self.softmax_scale, enable_gqa=True)
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
