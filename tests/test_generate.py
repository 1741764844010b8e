"""Generation (megatron_tsp/inference): greedy tokens and every step's logits equal
transformers' generate() on the same imported fp32 model at D = 1, 2 and 4; the KV cache is
sequence-sharded, 1/D of one device's per rank, also with fewer kv groups than ranks.

Two random transformers Qwen3 models, imported with the project's converter into torch_dist
checkpoints: tied with 2 kv groups (= D at 2, < D at 4) and untied with 4 (> D at 2, = D at
4). Prompts of 1, 5, 8 and 13 tokens: multiples of 2D and not.
"""

import pytest
import torch
import transformers

from tests.dist import run_distributed
from tests.hf_models import HF_SHAPE, randomize

MAX_NEW = 6
PROMPT_LENGTHS = (1, 5, 8, 13)
MODELS = {"tied_g2": dict(tie_word_embeddings=True),
          "untied_g4": dict(tie_word_embeddings=False, num_attention_heads=8,
                            num_key_value_heads=4, head_dim=16)}


def _import(hf_dir, save):
    from megatron_tsp.conversion.convert import import_hf
    import_hf(str(hf_dir), str(save), dtype="fp32")


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request, tmp_path_factory):
    """(transformers model, its torch_dist import)."""
    root = tmp_path_factory.mktemp(request.param)
    config = transformers.Qwen3Config(**{**HF_SHAPE, **MODELS[request.param]}, rope_theta=1e6)
    torch.manual_seed(0)
    model = randomize(transformers.Qwen3ForCausalLM(config).eval())
    model.save_pretrained(root / "hf")
    run_distributed(_import, 1, root / "hf", root / "ckpt")
    return model, root / "ckpt"


def _prompts(vocab):
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def _generate(tsp_size, checkpoint, prompts, max_new, block):
    from megatron_tsp.conversion.convert import load_model
    from megatron_tsp.inference.generate import generate
    model = load_model(str(checkpoint), tsp_size)
    return [generate(model, prompt, max_new, block=block, keep_logits=True)
            for prompt in prompts]


def test_greedy_tokens_and_logits_equal_transformers(imported):
    hf, checkpoint = imported
    prompts = _prompts(hf.config.vocab_size)
    expected = []
    for prompt in prompts:
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                          eos_token_id=None, pad_token_id=0, output_logits=True,
                          return_dict_in_generate=True)
        expected.append((out.sequences[0, len(prompt):].tolist(),
                         torch.cat(out.logits)))
    for tsp_size in (1, 2, 4):
        ranks = run_distributed(_generate, tsp_size, tsp_size, checkpoint, prompts, MAX_NEW, 2)
        for rank, results in enumerate(ranks):
            for prompt, result, (tokens, logits) in zip(prompts, results, expected):
                where = (tsp_size, rank, len(prompt))
                assert result.tokens == tokens, where
                ours = torch.stack(result.step_logits)
                assert (ours - logits).abs().max() <= 1e-4, (where, (ours - logits).abs().max())
