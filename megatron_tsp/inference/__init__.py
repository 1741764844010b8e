"""Generation from a TSP checkpoint: TSP prefill into a sequence-sharded KV cache, then decode
steps that use each rank's weight shards as its tensor-parallel shards (no weight moves).

kv_cache.py   the cache and where each token's keys/values live
prefill.py    the training forward over the prompt, filling the cache
decode.py     one tensor-parallel decode step, attention merged across ranks by log-sum-exp
generate.py   sampling, stop rules and the loop
arguments.py  generate_qwen3.py's flags and inputs
"""
