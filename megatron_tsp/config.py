"""The model shape of a Qwen3 dense decoder, and the published presets."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

# Megatron's own attention factor, so that its flags mean here what they mean there
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor)

from megatron_tsp.size_rules import refuse, shape_problem


@dataclass(frozen=True)
class YarnScaling:
    """YaRN rotary scaling (Peng et al., 2023), each field the Megatron flag of its docstring
    with Megatron's meaning and default (megatron/core/models/common/embeddings/
    yarn_rotary_pos_embedding.py, YarnRotaryEmbedding)."""

    factor: float = 1.0
    """--rotary-scaling-factor: the context extension s; the frequencies that turn fewer than
    beta_slow times over the original context are divided by s."""
    original_max_position_embeddings: int = 4096
    """--yarn-original-max-position-embeddings: the context the model was pretrained at."""
    beta_fast: float = 32.0
    """--yarn-beta-fast: frequencies turning more often than this over the original context
    are kept as they are."""
    beta_slow: float = 1.0
    """--yarn-beta-slow: frequencies turning less often than this are fully interpolated (a
    linear ramp lies between)."""
    mscale: float = 1.0
    """--mscale: cos and sin are multiplied by (0.1·mscale·ln s + 1) / (0.1·mscale_all_dim·ln s
    + 1), the attention factor (1 when s <= 1)."""
    mscale_all_dim: float = 0.0
    """--mscale-all-dim: the denominator's coefficient of the attention factor."""
    correction_range_round_to_int: bool = True
    """--yarn-correction-range-round-to-int: the ramp's ends rounded outwards to whole
    dimensions (transformers' `truncate`)."""

    def __post_init__(self):
        """Values that would crash the first step (a division by a zero beta, the log of a
        negative one) or turn every loss non-finite are refused here, at launch."""
        if not 1 <= self.factor < math.inf:
            raise ValueError(f"--rotary-scaling-factor must be finite and >= 1 for YaRN (it "
                             f"extends the context), got {self.factor}")
        if self.original_max_position_embeddings < 1:
            raise ValueError("--yarn-original-max-position-embeddings must be a positive "
                             f"integer, got {self.original_max_position_embeddings}")
        if not 0 < self.beta_slow < self.beta_fast < math.inf:
            raise ValueError(f"--yarn-beta-fast ({self.beta_fast}) must be finite and above "
                             f"--yarn-beta-slow ({self.beta_slow}), itself above 0: the ramp runs "
                             "from the slow to the fast rotations")
        for flag, value in (("--mscale", self.mscale), ("--mscale-all-dim", self.mscale_all_dim)):
            if not (math.isfinite(value) and 0.1 * value * math.log(self.factor) + 1 > 0):
                raise ValueError(f"{flag} {value}: 0.1 * {flag[2:]} * ln(factor) + 1 must be a "
                                 "finite positive number (a factor of the attention's cos/sin)")

    @property
    def attention_factor(self) -> float:
        """What cos and sin are multiplied by: mscale(s, mscale) / mscale(s, mscale_all_dim)."""
        return _yarn_get_concentration_factor(self.factor, self.mscale, self.mscale_all_dim)


@dataclass
class Qwen3Config:
    """Shape and numerics of a Qwen3 dense decoder (names follow Megatron's TransformerConfig)."""

    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Model width h."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: int
    """Key/value heads (GQA groups); equal to num_attention_heads for MHA."""
    kv_channels: int
    """Head dim; Qwen3 uses 128 whatever hidden / heads is."""
    ffn_hidden_size: int
    """SwiGLU intermediate size F."""
    vocab_size: int
    """Real vocabulary size V (before Megatron's padding); logits of padded rows are masked."""
    tie_word_embeddings: bool = True
    """Output layer reuses the embedding table (0.6B-4B) or has its own (8B and up)."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon (input, pre-MLP, final and q/k norms)."""
    rotary_base: float = 1_000_000.0
    """RoPE theta."""
    max_position_embeddings: int = 40960
    """Longest sequence the positions are meant for (131072 for Qwen3 with YaRN factor 4 over
    its original 32768)."""
    init_method_std: float = 0.02
    """Std of the normal init; output projections use std / sqrt(2 * num_layers) like Megatron."""
    make_vocab_size_divisible_by: int = 128
    """Megatron's vocabulary padding unit; the padded size is a multiple of this times D."""
    yarn: Optional[YarnScaling] = None
    """YaRN rotary scaling (--position-embedding-type yarn); None: plain RoPE."""

    def __post_init__(self):
        refuse(shape_problem(self))

    def padded_vocab_size(self, tsp_size: int) -> int:
        """Megatron's padding: the next multiple of make_vocab_size_divisible_by x D."""
        unit = self.make_vocab_size_divisible_by * tsp_size
        return -(-self.vocab_size // unit) * unit

    def replace(self, **changes) -> "Qwen3Config":
        return dataclasses.replace(self, **changes)


_QWEN3_VOCAB = 151936

PRESETS = {
    "tiny": Qwen3Config(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                        kv_channels=32, ffn_hidden_size=192, vocab_size=4096),
    "0.6b": Qwen3Config(28, 1024, 16, 8, 128, 3072, _QWEN3_VOCAB, tie_word_embeddings=True),
    "1.7b": Qwen3Config(28, 2048, 16, 8, 128, 6144, _QWEN3_VOCAB, tie_word_embeddings=True),
    "4b": Qwen3Config(36, 2560, 32, 8, 128, 9728, _QWEN3_VOCAB, tie_word_embeddings=True),
    "8b": Qwen3Config(36, 4096, 32, 8, 128, 12288, _QWEN3_VOCAB, tie_word_embeddings=False),
    "14b": Qwen3Config(40, 5120, 40, 8, 128, 17408, _QWEN3_VOCAB, tie_word_embeddings=False),
    "32b": Qwen3Config(64, 5120, 64, 8, 128, 25600, _QWEN3_VOCAB, tie_word_embeddings=False),
}


def qwen3_preset(name: str) -> Qwen3Config:
    """A copy of a published Qwen3 shape ('0.6b' ... '32b') or the CPU-sized 'tiny'."""
    if name not in PRESETS:
        raise ValueError(f"unknown --model-size {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
