"""Small random Hugging Face Qwen3 models: the independent reference (never downloaded)."""

import torch
import transformers

# head_dim 32 != hidden / heads = 16, so a hidden/heads default would be caught
HF_SHAPE = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, intermediate_size=128, rms_norm_eps=1e-6,
                max_position_embeddings=4096)


def hf_model(tie: bool) -> transformers.Qwen3ForCausalLM:
    cfg = transformers.Qwen3Config(**HF_SHAPE, rope_theta=1e6, tie_word_embeddings=tie)
    torch.manual_seed(0)
    return randomize(transformers.Qwen3ForCausalLM(cfg).eval())


def randomize(model: transformers.Qwen3ForCausalLM) -> transformers.Qwen3ForCausalLM:
    """The model with every tensor drawn from torch's global generator."""
    # HF initialises norms to ones, which would hide a swapped norm: randomise every tensor,
    # scaled so the logits are O(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if p.ndim == 1 else 0.15 * torch.randn_like(p))
    return model


def hf_checkpoint_dict(model) -> dict:
    """The state dict as HF saves it: no lm_head when tied."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        del sd["lm_head.weight"]
    return sd
