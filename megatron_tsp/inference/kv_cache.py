"""The sequence-sharded KV cache: each rank keeps the keys/values of its own tokens, for every
layer and every kv head, so a rank holds 1/D of the cache whatever the number of kv heads.

Legend: L layers, b batch, G kv heads, hd head dim, n_r tokens cached on rank r.

The prompt's tokens stay on the rank prefill's zigzag layout gave them (padding dropped).
Generated tokens are cached in blocks of `block` consecutive tokens, each block on the rank
holding the fewest tokens (the lowest on a tie): round-robin once the ranks are even, after
evening out what the padding left uneven. Decode attends over the cached keys as a set (RoPE
has already put each position into its key), so where a token sits does not change the result.
Placement is decided from counts every rank knows, so no rank waits to learn where a token goes.
"""

from typing import Tuple

import torch

from megatron_tsp.config import Qwen3Config
from megatron_tsp.layout import decode_placement, prompt_counts

class KVCache:
    """This rank's slice: kv [L, 2, b, G, capacity, hd], sized for the prompt and every
    generated token that will be cached here, so decode never reallocates."""

    def __init__(self, config: Qwen3Config, batch: int, prompt_tokens: int, new_tokens: int,
                 block: int, rank: int, tsp_size: int, like: torch.Tensor):
        counts = prompt_counts(prompt_tokens, tsp_size)
        self.owners = decode_placement(counts, new_tokens, block)
        self.rank, self.length, self.step = rank, counts[rank], 0
        capacity = counts[rank] + self.owners.count(rank)
        self.kv = torch.empty((config.num_layers, 2, batch, config.num_query_groups, capacity,
                               config.kv_channels), dtype=like.dtype, device=like.device)

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def fill_prompt(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [b, G, n_r, hd]: this rank's real prompt tokens of one layer."""
        assert k.shape[2] == self.length and self.step == 0
        self.kv[layer, 0, :, :, :self.length] = k
        self.kv[layer, 1, :, :, :self.length] = v

    def _owns_current(self) -> bool:
        return self.owners[self.step] == self.rank

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [b, G, hd] of the token being decoded; kept only by the rank it is placed on."""
        if self._owns_current():
            self.kv[layer, 0, :, :, self.length] = k
            self.kv[layer, 1, :, :, self.length] = v

    def keys_values(self, layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """[b, G, n_r, hd] keys and values cached here, the current token's if placed here."""
        n = self.length + self._owns_current()
        return self.kv[layer, 0, :, :, :n], self.kv[layer, 1, :, :, :n]

    def advance(self) -> None:
        """The current token is cached (on its rank): the next decode step's token is next."""
        self.length += self._owns_current()
        self.step += 1
