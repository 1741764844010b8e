"""pretrain_qwen3.py (TSP, --tsp-size 2) trains exactly like plain megatron-core GPTModel in
Megatron's own loop (tests/mcore_pretrain_gpt.py, data parallel 2, no model parallelism): from the
same weights (a random Hugging Face Qwen3 imported with tools/convert_checkpoint.py, which both
--load) on the same mock data with the same optimizer and schedule, the logged `lm loss` and
`grad norm` are equal at every iteration. The grad norm is Megatron's own, over the whole model:
it would show a gradient scaled by 0.5 or counted twice, which Adam hides from the losses."""

import pytest

from tests.hf_models import HF_SHAPE, hf_model
from tests.pretrain_runner import (convert, grad_norms, lm_losses, losses_and_grad_norms_of,
                                   run_mcore_driver)

pytestmark = pytest.mark.slow
ITERATIONS = 5
# both runs: the same data, batch, optimizer schedule and seed
COMMON = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--seq-length", "64",
          "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", ITERATIONS,
          "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine",
          "--lr-warmup-iters", "1", "--log-interval", "1", "--eval-interval", "1000",
          "--eval-iters", "0", "--seed", "1234"]
# GPTModel: CPU (no CUDA kernels, gloo), no dropout, and Qwen3 at the imported model's shape
GPT_ARGS = [
    "--distributed-backend", "gloo", "--transformer-impl", "local", "--use-cpu-initialization",
    "--no-gradient-accumulation-fusion", "--no-persist-layer-norm", "--no-masked-softmax-fusion",
    "--no-bias-gelu-fusion", "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion",
    "--no-rope-fusion", "--hidden-dropout", "0", "--attention-dropout", "0",
    "--num-layers", HF_SHAPE["num_hidden_layers"], "--hidden-size", HF_SHAPE["hidden_size"],
    "--num-attention-heads", HF_SHAPE["num_attention_heads"], "--group-query-attention",
    "--num-query-groups", HF_SHAPE["num_key_value_heads"], "--kv-channels", HF_SHAPE["head_dim"],
    "--ffn-hidden-size", HF_SHAPE["intermediate_size"], "--swiglu", "--normalization", "RMSNorm",
    "--norm-epsilon", HF_SHAPE["rms_norm_eps"], "--qk-layernorm", "--disable-bias-linear",
    "--position-embedding-type", "rope", "--rotary-base", "1000000",
    "--max-position-embeddings", HF_SHAPE["max_position_embeddings"],
    # 512 = 4 x 128: no vocabulary padding (GPTModel would softmax over padded rows)
    "--vocab-size", HF_SHAPE["vocab_size"], "--ckpt-format", "torch_dist",
]


def _megatron_gpt_run(checkpoint):
    """tests/mcore_pretrain_gpt.py on 2 ranks from `checkpoint`: (losses, grad norms)."""
    output = run_mcore_driver(GPT_ARGS + COMMON + ["--load", checkpoint])
    return lm_losses(output), grad_norms(output)


def test_tsp_trains_like_megatron_gptmodel(tmp_path):
    hf_model(tie=True).save_pretrained(tmp_path / "hf")
    convert("import-hf", "--hf-path", tmp_path / "hf", "--save", tmp_path / "imported",
            "--dtype", "fp32")
    tsp_losses, tsp_norms = losses_and_grad_norms_of(
        2, COMMON + ["--tsp-size", "2", "--load", tmp_path / "imported",
                     "--use-checkpoint-args"], tmp_path / "cache")
    gpt_losses, gpt_norms = _megatron_gpt_run(tmp_path / "imported")
    iterations = list(range(1, ITERATIONS + 1))
    assert sorted(tsp_losses) == sorted(gpt_losses) == iterations, (tsp_losses, gpt_losses)
    assert sorted(tsp_norms) == sorted(gpt_norms) == iterations, (tsp_norms, gpt_norms)
    for i in iterations:
        assert abs(tsp_losses[i] - gpt_losses[i]) <= 1e-5 * gpt_losses[i], (
            i, tsp_losses, gpt_losses)
        # Megatron prints the grad norm with 3 decimals: equal up to one unit of the last digit
        assert abs(tsp_norms[i] - gpt_norms[i]) <= 1.5e-3, (i, tsp_norms, gpt_norms)
    # the run trained (the weights moved), so later iterations compare the updates too
    assert tsp_losses[ITERATIONS] != tsp_losses[1]
