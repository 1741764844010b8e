"""The names of the transfers: the kinds comm.py's counters count by, the planner predicts bytes
for, and the benchmark's counters of Megatron's own collectives report. One constant each, so that
a counted kind and a predicted one cannot drift apart by a spelling.
"""

# TSP (megatron_tsp.comm)
ATTN_WEIGHTS = "attn_weights"  # attention weight shards broadcast from their owners
ATTN_KV = "attn_kv"  # the keys/values of the local tokens, all-gathered
MLP_WEIGHTS = "mlp_weights"  # MLP weight shards around the ring
VOCAB_WEIGHTS = "vocab_weights"  # vocabulary table shards around the ring
LOSS = "loss"  # the loss sums and token counts, all-reduced
REPLICATED_GRADS = "replicated_grads"  # the gradient sum of the replicated norms
LAYOUT_GATHER = "layout_gather"  # a zigzag sequence rebuilt in full
# generation (megatron_tsp.inference)
PREFILL_KV_WEIGHTS = "prefill_kv_weights"  # each owner's k/v weight rows, once per prefill
PREFILL_HIDDEN = "prefill_hidden"  # the last prompt token's hidden state, broadcast
DECODE_EMBEDDING = "decode_embedding"  # the new token's embedding, summed over the table shards
DECODE_LOGITS = "decode_logits"  # the new token's logits, gathered
DECODE_QKV = "decode_qkv"  # the new token's q/k/v, gathered
DECODE_ATTN_MERGE = "decode_attn_merge"  # partial attention outputs and log-sum-exps, all-to-all
DECODE_ATTN_OUT = "decode_attn_out"  # the output projection's partial sums, all-reduced
DECODE_MLP_OUT = "decode_mlp_out"  # the MLP's partial sums, all-reduced
# Megatron's layouts that TSP is compared with (benchmarks' counters, the planner)
TP_ALL_REDUCE = "tp_all_reduce"
SP_ALL_GATHER = "sp_all_gather"
SP_REDUCE_SCATTER = "sp_reduce_scatter"
VOCAB_LOSS = "vocab_loss"  # the vocab-parallel cross entropy's all-reduces
CP_KV = "cp_kv"
CP_WEIGHT_GRADS = "cp_weight_grads"
DP_GRADS = "dp_grads"  # the gradient sync over data-parallel replicas (planner only)


def grad_kind(kind: str) -> str:
    """The kind of the backward transfer that carries `kind`'s gradient back."""
    return kind + "_grad"
