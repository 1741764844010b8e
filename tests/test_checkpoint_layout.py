"""The TSP model's checkpoint layout is GPTModel's at tensor-parallel size D, and a torch_dist
checkpoint saved at one D loads at another with the same weights."""

import pytest
import torch

from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed
from tests.tsp_harness import tiny_config


def _describe(sharded):
    out = {}
    for name, item in sharded.items():
        fields = [type(item).__name__, item.key, tuple(item.data.shape)
                  if getattr(item, "data", None) is not None else None,
                  item.replica_id]
        for attr in ("global_shape", "global_offset", "axis_fragmentations"):
            fields.append(getattr(item, attr, None))
        out[name] = tuple(fields)
    return out


def _layouts(tsp_size, config):
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron_tsp.models.mcore_gpt import build_mcore_qwen3
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    ps.initialize_tsp(tsp_size)
    model_parallel_cuda_manual_seed(0)
    tsp, gpt = TSPQwen3Model(config), build_mcore_qwen3(config, tsp_size)
    result = (_describe(tsp.sharded_state_dict()), _describe(gpt.sharded_state_dict()),
              sorted(tsp.state_dict()), sorted(gpt.state_dict()))
    ps.destroy_tsp()
    return result


@pytest.mark.parametrize("tsp_size, config", [
    (2, tiny_config(heads=8, groups=2, tied=False)),
    (4, tiny_config(heads=8, groups=2, tied=True)),
])
def test_sharded_state_dict_is_gptmodels_at_tp_d(tsp_size, config):
    for tsp, gpt, tsp_keys, gpt_keys in run_distributed(_layouts, tsp_size, tsp_size, config):
        assert tsp_keys == gpt_keys
        assert tsp == gpt


def _save(tsp_size, config, directory):
    from megatron.core import dist_checkpointing
    from megatron_tsp.models.full_weights import full_state_dict
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    ps.initialize_tsp(tsp_size)
    model = TSPQwen3Model(config)
    model.init_weights(11)
    dist_checkpointing.save(model.sharded_state_dict(), directory)
    full = full_state_dict(model)
    ps.destroy_tsp()
    return full


def _load(tsp_size, config, directory):
    from megatron_tsp.checkpoint import load_model_weights
    from megatron_tsp.models.full_weights import full_state_dict
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    ps.initialize_tsp(tsp_size)
    model = TSPQwen3Model(config)
    model.init_weights(99)
    load_model_weights(model, directory, nested_key=None)
    full = full_state_dict(model)
    ps.destroy_tsp()
    return full


def test_torch_dist_checkpoint_reshards_between_tsp_sizes(tmp_path):
    config = tiny_config(heads=8, groups=4, tied=False)
    saved = run_distributed(_save, 2, 2, config, str(tmp_path))[0]
    loaded = run_distributed(_load, 4, 4, config, str(tmp_path))[0]
    assert saved.keys() == loaded.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
