"""TSPQwen3Model holds Megatron's view of it consistent whoever builds its TransformerConfig or
process-group collection: Megatron's finalize_model_grads sums the replicated params' gradients
over the tensor-parallel group only when sequence_parallel is set, and its training loop reads
the model's groups."""

import torch.distributed as dist

from megatron_tsp import parallel_state as ps
from tests.dist import run_distributed
from tests.tsp_harness import tiny_config


def _config_and_refusal():
    from megatron.core.process_groups_config import ProcessGroupCollection

    from megatron_tsp.config_adapters import transformer_config_from_qwen3
    from megatron_tsp.models.qwen3 import TSPQwen3Model
    ps.initialize_tsp(2)
    try:
        cfg = tiny_config()
        given = transformer_config_from_qwen3(cfg, 2, sequence_parallel=False)
        sequence_parallel = TSPQwen3Model(cfg, given).config.sequence_parallel
        groups = ProcessGroupCollection.use_mpu_process_groups()
        groups.tp = dist.new_group(dist.get_process_group_ranks(groups.tp))
        try:
            TSPQwen3Model(cfg, pg_collection=groups)
            refused = ""
        except ValueError as error:
            refused = str(error)
        return sequence_parallel, refused
    finally:
        ps.destroy_tsp()


def test_sequence_parallel_is_set_and_the_groups_are_the_tsp_group():
    sequence_parallel, refused = run_distributed(_config_and_refusal, 2)[0]
    assert sequence_parallel is True
    assert "pg_collection.tp must be the TSP group" in refused
