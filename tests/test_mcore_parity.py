"""The TSP model equals plain megatron-core: GPTModel (local spec, TP = 1) with the same weights
gives the same loss and the same gradient for every parameter as TSP at D = 1 and 2."""

from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed
from tests.tsp_harness import full_batch, tiny_config, train_step

# vocab a multiple of 128: GPTModel softmaxes over padded rows, TSP masks them
CONFIG = tiny_config(heads=8, groups=2, tied=False, vocab_size=512)
SEED, BATCH, SEQ = 5, 2, 32


def _gptmodel_step(full_weights):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron_tsp.models.mcore_gpt import build_mcore_qwen3
    ps.initialize_tsp(1)
    model_parallel_cuda_manual_seed(0)
    model = build_mcore_qwen3(CONFIG)
    missing, unexpected = model.load_state_dict(full_weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), missing
    tokens, labels, positions, loss_mask = full_batch(CONFIG.vocab_size, BATCH, SEQ)
    loss = model(tokens, positions, None, labels=labels)
    mean = (loss * loss_mask).sum() / loss_mask.sum()
    mean.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    ps.destroy_tsp()
    return mean.item(), grads


def _tsp_step(tsp_size):
    from megatron_tsp.models.full_weights import full_state_dict
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    from tests.tsp_harness import full_grads
    ps.initialize_tsp(tsp_size)
    model = TSPQwen3Model(CONFIG)
    model.init_weights(SEED)
    weights = full_state_dict(model)
    mean, _ = train_step(model, full_batch(CONFIG.vocab_size, BATCH, SEQ))
    grads = full_grads(model)
    ps.destroy_tsp()
    return weights, mean.item(), grads


def test_tsp_equals_megatron_gptmodel():
    weights, tsp1_loss, tsp1_grads = run_distributed(_tsp_step, 1, 1)[0]
    _, tsp2_loss, tsp2_grads = run_distributed(_tsp_step, 2, 2)[0]
    gpt_loss, gpt_grads = run_distributed(_gptmodel_step, 1, weights)[0]
    for loss in (tsp1_loss, tsp2_loss):
        assert abs(loss - gpt_loss) <= 1e-5 * gpt_loss, (loss, gpt_loss)
    assert gpt_grads.keys() == tsp2_grads.keys()
    for name, expected in gpt_grads.items():
        for grads in (tsp1_grads, tsp2_grads):
            error = (grads[name] - expected).norm() / expected.norm()
            assert error < 1e-5, (name, error.item())
