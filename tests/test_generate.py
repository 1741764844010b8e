"""Generation (megatron_tsp/inference): greedy tokens and every step's logits equal
transformers' generate() on the same imported fp32 model at D = 1, 2 and 4; the KV cache is
sequence-sharded, 1/D of one device's per rank (measured from the cache tensors), also with
fewer kv groups than ranks.

Two random transformers Qwen3 models, imported with the project's converter into torch_dist
checkpoints: tied with 2 kv groups (= D at 2, < D at 4) and untied with 4 (> D at 2, = D at
4). Prompts of 1, 13 and 64 tokens: a multiple of 2D and not. D = 4, 2 and 1 run in one launch
of 4 processes (at D < 4 the groups beside the first repeat it).
"""

import pytest
import torch
import transformers

from tests.dist import run_distributed
from tests.hf_models import HF_SHAPE, randomize

MAX_NEW = 9
BLOCK = 2
PROMPT_LENGTHS = (1, 13, 64)
MODELS = {"tied_g2": dict(tie_word_embeddings=True),
          "untied_g4": dict(tie_word_embeddings=False, num_attention_heads=8,
                            num_key_value_heads=4, head_dim=16)}


def _import(hf_dir, save):
    from megatron_tsp.conversion.convert import import_hf
    import_hf(str(hf_dir), str(save), dtype="fp32")


def _prompts(vocab):
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


def _every_size(checkpoints, prompts):
    """Worker on 4 ranks: {(model, D): [Generation per prompt]} of this rank."""
    from megatron_tsp import parallel_state as ps
    from megatron_tsp.checkpoint import checkpoint_dir, load_model_weights
    from megatron_tsp.conversion.convert import checkpoint_args, checkpoint_dtype
    from megatron_tsp.inference.generate import Sampling, generate
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    from megatron_tsp.config_adapters import qwen3_config_from_args
    results = {}
    for tsp_size in (4, 2, 1):
        ps.initialize_tsp(tsp_size)
        try:
            for name, checkpoint in checkpoints.items():
                args = checkpoint_args(str(checkpoint))
                model = TSPQwen3Model(qwen3_config_from_args(args, args.tsp_vocab_size),
                                      dtype=checkpoint_dtype(args))
                load_model_weights(model, str(checkpoint_dir(str(checkpoint))))
                results[(name, tsp_size)] = [
                    generate(model, prompt, MAX_NEW, block=BLOCK, keep_logits=True)
                    for prompt in prompts[name]]
                greedy = results[(name, tsp_size)][-1].tokens
                results[(name, tsp_size, "stop")] = generate(
                    model, prompts[name][-1], MAX_NEW, stop_ids=[greedy[3]]).tokens
                results[(name, tsp_size, "sampled")] = generate(
                    model, prompts[name][-1], MAX_NEW, Sampling(0.8, 20, 0.9, seed=7),
                    vocab_limit=100).tokens
        finally:
            ps.destroy_tsp()
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{model name: (transformers model, prompts)} and each rank's generations."""
    models, checkpoints = {}, {}
    for name, shape in MODELS.items():
        root = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        config = transformers.Qwen3Config(**{**HF_SHAPE, **shape}, rope_theta=1e6)
        model = randomize(transformers.Qwen3ForCausalLM(config).eval())
        model.save_pretrained(root / "hf")
        run_distributed(_import, 1, root / "hf", root / "ckpt")
        models[name] = model, _prompts(config.vocab_size)
        checkpoints[name] = root / "ckpt"
    prompts = {name: p for name, (_, p) in models.items()}
    return models, run_distributed(_every_size, 4, checkpoints, prompts)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_tokens_and_logits_equal_transformers(runs, name):
    models, ranks = runs
    hf, prompts = models[name]
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        # an explicit mask: without one transformers masks every id equal to pad_token_id
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                          do_sample=False, eos_token_id=None, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True)
        tokens, logits = out.sequences[0, len(prompt):].tolist(), torch.cat(out.logits)
        for tsp_size in (1, 2, 4):
            for rank in range(4):
                result = ranks[rank][(name, tsp_size)][i]
                where = (tsp_size, rank, len(prompt))
                assert result.tokens == tokens, where
                error = (torch.stack(result.step_logits) - logits).abs().max().item()
                assert error <= 1e-4, (where, error)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stop_token_and_sampling(runs, name):
    """Generation ends at a stop id (kept, as transformers keeps its eos); sampling draws the
    same tokens on every rank of a group, and only below the vocabulary limit."""
    _, ranks = runs
    for tsp_size in (1, 2, 4):
        greedy = ranks[0][(name, tsp_size)][-1].tokens
        assert ranks[0][(name, tsp_size, "stop")] == greedy[:greedy.index(greedy[3]) + 1]
        sampled = [ranks[r][(name, tsp_size, "sampled")] for r in range(tsp_size)]
        assert all(s == sampled[0] for s in sampled), (tsp_size, sampled)
        assert len(sampled[0]) == MAX_NEW and max(sampled[0]) < 100, sampled[0]


def test_sample_restricts_to_top_k_and_top_p():
    from megatron_tsp.inference.generate import Sampling, sample
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]]).log_softmax(-1).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    assert sample(logits, Sampling(), None).eq(1).all()
    assert sample(logits, Sampling(1.0, top_k=1), generator).eq(1).all()
    assert set(sample(logits, Sampling(1.0, top_k=2), generator).tolist()) == {1, 2}
    # probabilities ~ (.03, .64, .24, .09, .01): the best two reach 0.8
    assert set(sample(logits, Sampling(1.0, top_p=0.8), generator).tolist()) == {1, 2}
    assert set(sample(logits, Sampling(1.0), generator).tolist()) == {0, 1, 2, 3, 4}


def _config(hf):
    from megatron_tsp.config_adapters import qwen3_config_from_hf
    return qwen3_config_from_hf(hf.config.to_dict(), "config")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_planner_bytes_equal_the_transfer_counters(runs, name):
    """Per prefill and per generated token, the planner's bytes per rank (mean over the
    group) equal what the counters counted; decode's do not depend on the context."""
    from megatron_tsp.planner.inference import tsp_decode_bytes, tsp_prefill_bytes
    models, ranks = runs
    config = _config(models[name][0])
    for i, length in enumerate(PROMPT_LENGTHS):
        for tsp_size in (1, 2, 4):
            results = [ranks[r][(name, tsp_size)][i] for r in range(tsp_size)]
            where = (tsp_size, length)
            prefill = sum(r.prefill_bytes for r in results)
            assert prefill == tsp_size * tsp_prefill_bytes(config, length, tsp_size, 4), where
            per_token = {r.bytes_per_generated_token for r in results}
            assert per_token == {tsp_decode_bytes(config, tsp_size, 4)}, (where, per_token)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cache_per_rank_is_one_device_over_d(runs, name):
    """Measured bytes of each rank's cache tensor: together exactly one device's cache; per
    rank 1/D of it, exactly when the prompt and the generated blocks divide evenly (64 + 8
    tokens), otherwise within one block and the padding's few tokens."""
    from megatron_tsp.planner.inference import bytes_per_cached_token
    models, ranks = runs
    per_token = bytes_per_cached_token(_config(models[name][0]), 4)
    for i, length in enumerate(PROMPT_LENGTHS):
        one_device = ranks[0][(name, 1)][i].cache_bytes
        assert one_device == per_token * (length + MAX_NEW - 1)
        for tsp_size in (2, 4):
            cache = [ranks[r][(name, tsp_size)][i].cache_bytes for r in range(tsp_size)]
            assert sum(cache) == one_device, (tsp_size, length, cache)
            if length == 64:
                assert cache == [one_device // tsp_size] * tsp_size, (tsp_size, cache)
            else:
                slack = per_token * (BLOCK + 2 * tsp_size)
                assert max(cache) <= one_device / tsp_size + slack, (tsp_size, length, cache)


def test_decode_benchmark_counts_what_the_planner_predicts(capsys):
    """benchmarks/compare_decode.py on loopback at D = 2: TSP and the tensor-parallel reference
    generate the same greedy tokens, and each one's cache and bytes per prefill and per
    generated token are the planner's."""
    from benchmarks.compare_decode import main as benchmark_main
    results = benchmark_main(["--group-size", "2", "--prompt-length", "64", "--new-tokens", "4"])
    assert results["same_tokens"], results
    for scheme in ("tsp", "tp"):
        measured, planner = results[scheme], results[scheme]["planner"]
        assert max(measured["cache_bytes_per_rank"]) == planner["cache_bytes"], scheme
        assert measured["prefill_bytes_per_rank"] == planner["prefill_bytes"], scheme
        assert measured["bytes_per_generated_token_per_rank"] == \
            planner["bytes_per_generated_token"], scheme
    assert "| tsp |" in capsys.readouterr().out
