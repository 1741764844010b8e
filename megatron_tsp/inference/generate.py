"""The generation loop: prefill, then one decode step per token, sampling and stop rules.

Every rank holds the same gathered logits and the same seeded generator, so every rank samples
the same token without an exchange. Reading the sampled token to decide whether to stop is the
one host synchronisation per generated token.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from megatron_tsp import comm
from megatron_tsp import parallel_state as ps
from megatron_tsp.inference.decode import decode_step, logits as output_logits
from megatron_tsp.inference.kv_cache import KVCache
from megatron_tsp.inference.prefill import prefill
from megatron_tsp.layout import BLOCK


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; otherwise softmax(logits / temperature) restricted to the top_k
    tokens (0: all) and to the smallest set whose probability reaches top_p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1234


def sample(logits: torch.Tensor, sampling: Sampling,
           generator: Optional[torch.Generator]) -> torch.Tensor:
    """logits [b, V] -> token ids [b]."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        ordered, order = logits.sort(-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of better tokens
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order,
                                                                 before >= sampling.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def _total_bytes(before: Dict, after: Dict) -> int:
    return sum(v["sent"] + v["received"] - before.get(k, {}).get("sent", 0)
               - before.get(k, {}).get("received", 0) for k, v in after.items())


@dataclass
class Generation:
    """One prompt's result: the generated ids, timings, this rank's cache and its transfers."""

    tokens: List[int]
    time_to_first_token_s: float
    decode_s: float
    cache_bytes: int
    prefill_bytes: int
    decode_bytes: int
    step_logits: List[torch.Tensor] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.tokens) - 1
        return steps / self.decode_s if steps and self.decode_s > 0 else float("nan")

    @property
    def bytes_per_generated_token(self) -> float:
        steps = len(self.tokens) - 1
        return self.decode_bytes / steps if steps else float("nan")


@torch.no_grad()
def generate(model, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_ids: Sequence[int] = (), stop: Optional[Callable[[List[int]], bool]] = None,
             vocab_limit: Optional[int] = None, block: int = BLOCK,
             keep_logits: bool = False) -> Generation:
    """Up to max_new_tokens ids after `prompt` (the same on every rank of the TSP group), ending
    at the first of `stop_ids` (kept, as transformers keeps its eos) or when `stop(tokens)`
    holds. Only ids below `vocab_limit` (the tokenizer's vocabulary; by default the model's)
    are ever chosen."""
    assert prompt and max_new_tokens >= 1
    weight = model.output_weight()
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    cache = KVCache(model.qwen3_config, 1, len(prompt), max_new_tokens - 1, block, p, D, weight)
    generator = None
    if sampling.temperature:
        generator = torch.Generator(device=weight.device).manual_seed(sampling.seed)
    limit = vocab_limit or model.qwen3_config.vocab_size
    kept: List[torch.Tensor] = []

    def choose(step_logits: torch.Tensor) -> torch.Tensor:
        if keep_logits:
            kept.append(step_logits[0].clone())
        return sample(step_logits[:, :limit], sampling, generator)

    counters = comm.transfer_counters()
    start = time.perf_counter()
    hidden = prefill(model, torch.tensor([list(prompt)], device=weight.device), cache)
    token = choose(output_logits(model, hidden))
    tokens = [int(token)]  # the host reads the token to know whether to stop
    first = time.perf_counter()
    after_prefill = comm.transfer_counters()
    while len(tokens) < max_new_tokens and tokens[-1] not in stop_ids \
            and not (stop and stop(tokens)):
        token = choose(decode_step(model, token, len(prompt) + len(tokens) - 1, cache))
        tokens.append(int(token))
    end = time.perf_counter()
    return Generation(tokens, first - start, end - first, cache.nbytes,
                      _total_bytes(counters, after_prefill),
                      _total_bytes(after_prefill, comm.transfer_counters()), kept)
