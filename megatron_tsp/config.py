"""The model shape of a Qwen3 dense decoder, and the published presets."""

import dataclasses
from dataclasses import dataclass

from megatron_tsp.size_rules import refuse, shape_problem


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
    """Longest sequence the positions are meant for."""
    init_method_std: float = 0.02
    """Std of the normal init; output projections use std / sqrt(2 * num_layers) like Megatron."""
    make_vocab_size_divisible_by: int = 128
    """Megatron's vocabulary padding unit; the padded size is a multiple of this times D."""

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
