"""Megatron-core GPTModel (local spec) with a fused-attention core: the tp, tp-sp and single runs.

The local spec's DotProductAttention materialises the [b, heads/D, S, S] scores and keeps the
softmax for backward, so on CPU it alone would be O(S^2) memory and the comparison would be about
attention kernels, not parallelism. On GPU Megatron runs Transformer Engine's fused (flash)
attention, which keeps O(S). Its CPU stand-in here is torch's scaled_dot_product_attention
(flash kernel on CPU: keeps only the log-sum-exp), the same kernel megatron_tsp's attention uses.
Everything else is megatron-core's own: linears, norms, RoPE, embedding, vocab-parallel loss.
"""

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention

from megatron_tsp.config import Qwen3Config
from megatron_tsp.config_adapters import transformer_config_from_qwen3


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


def build_gpt_model(config: Qwen3Config, tensor_model_parallel_size: int,
                    sequence_parallel: bool, params_dtype: torch.dtype) -> GPTModel:
    """megatron_tsp.models.mcore_gpt.build_mcore_qwen3 with the fused attention core."""
    spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = FusedDotProductAttention
    return GPTModel(
        config=transformer_config_from_qwen3(config, tensor_model_parallel_size,
                                             sequence_parallel, params_dtype),
        transformer_layer_spec=spec,
        vocab_size=config.padded_vocab_size(tensor_model_parallel_size),
        max_sequence_length=config.max_position_embeddings,
        share_embeddings_and_output_weights=config.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=config.rotary_base,
    )
