"""The Qwen3 dense decoder assembled from TSP layers, shaped like Megatron-Core's GPTModel.

Same [s, b, h] layout, same parameter names as GPTModel with the local layer spec
(embedding.word_embeddings, decoder.layers.N.{input_layernorm, self_attention.*,
pre_mlp_layernorm, mlp.*}, decoder.final_layernorm, output_layer) and, at TSP size D, the same
shards as GPTModel at tensor-parallel size D. Inputs are the LOCAL zigzag shard of each sequence
(see megatron_tsp.layout); position ids are the global positions of the local tokens.
"""

import dataclasses
import math
import re
from typing import List, Optional

import torch
from torch import nn

from megatron.core import parallel_state as mpu
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import get_num_layers_to_build
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from megatron_tsp import parallel_state as ps
from megatron_tsp.layers.attention import TSPSelfAttention
from megatron_tsp.layers.linear import TSPLinear, draw_full_normal, is_sharded, shard_of
from megatron_tsp.layers.mlp import TSPMLP
from megatron_tsp.layers.norm import RMSNorm
from megatron_tsp.layers.recompute import MODES, NONE, Recompute, layer_recomputes
from megatron_tsp.layers.rotary import rotary_cos_sin
from megatron_tsp.layers.vocab import TSPEmbedding, vocab_cross_entropy, vocab_logits
from megatron_tsp.config import Qwen3Config
from megatron_tsp.documents import PackedDocuments
from megatron_tsp.config_adapters import transformer_config_from_qwen3
from megatron_tsp.models.mcore_gpt import build_mcore_qwen3

_VOCAB_TABLES = ("embedding.word_embeddings.weight", "output_layer.weight")
_OUTPUT_PROJECTIONS = ("linear_proj.weight", "linear_fc2.weight")
_LAYER_NAME = re.compile(r"decoder\.layers\.(\d+)\.(.*)")


def _transformer_config(config: Qwen3Config, dtype: torch.dtype, **recompute) -> TransformerConfig:
    """Megatron's TransformerConfig of the TSP model at the current TSP and pipeline sizes."""
    D = ps.get_tsp_world_size()
    # sequence_parallel tells Megatron's finalize_model_grads to sum the replicated params'
    # gradients over the TP (here: TSP) group, as TSP shards tokens over that group
    return dataclasses.replace(transformer_config_from_qwen3(
        config, D, sequence_parallel=D > 1, params_dtype=dtype,
        pipeline_model_parallel_size=mpu.get_pipeline_model_parallel_world_size()), **recompute)


class TSPTransformerLayer(nn.Module):
    def __init__(self, config: Qwen3Config, dtype: torch.dtype, recompute: Recompute = NONE):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_epsilon, dtype)
        self.self_attention = TSPSelfAttention(config, dtype, recompute)
        self.pre_mlp_layernorm = RMSNorm(config.hidden_size, config.norm_epsilon, dtype)
        self.mlp = TSPMLP(config, dtype, recompute)

    def forward(self, hidden, cos, sin, documents):
        hidden = hidden + self.self_attention(self.input_layernorm(hidden), cos, sin, documents)
        return hidden + self.mlp(self.pre_mlp_layernorm(hidden))


class TSPTransformerBlock(nn.Module):
    """This pipeline stage's layers (named from 0, like GPTModel's) and, on the last stage, the
    final norm."""

    def __init__(self, config: Qwen3Config, recomputes: List[Recompute], post_process: bool,
                 dtype: torch.dtype):
        super().__init__()
        self.layers = nn.ModuleList(TSPTransformerLayer(config, dtype, r) for r in recomputes)
        if post_process:
            self.final_layernorm = RMSNorm(config.hidden_size, config.norm_epsilon, dtype)

    def forward(self, hidden, cos, sin, documents):
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, documents)
        if hasattr(self, "final_layernorm"):
            hidden = self.final_layernorm(hidden)
        return hidden


class _TiedOutputLayer(nn.Module):
    """With tied embeddings GPTModel keeps an output_layer without a weight; its (empty) extra
    state is part of GPTModel's state_dict, so it is part of ours."""

    def get_extra_state(self):
        return None

    def set_extra_state(self, state) -> None:
        """Nothing to restore."""


class TSPQwen3Model(MegatronModule):
    """Qwen3 under TSP. The TSP group (megatron_tsp.parallel_state) must be initialised first.

    `qwen3_config` is the model shape; `config` is Megatron's TransformerConfig (what Megatron's
    schedules, DDP and optimizer read), built from the shape when not given. With pipeline
    parallelism, pre_process / post_process and the stage's layers follow GPTModel. What each
    layer keeps for backward follows the config's recompute fields and `recompute_activations`
    (--tsp-recompute-activations; layers/recompute.py).
    """

    def __init__(self, config: Qwen3Config,
                 transformer_config: Optional[TransformerConfig] = None,
                 pre_process: bool = True, post_process: bool = True,
                 dtype: torch.dtype = torch.float32,
                 pg_collection: Optional[ProcessGroupCollection] = None,
                 recompute_activations: bool = False):
        D = ps.get_tsp_world_size()
        if transformer_config is None:
            transformer_config = _transformer_config(config, dtype)
        else:  # see _transformer_config: whoever built it, TSP shards tokens over its group
            transformer_config = dataclasses.replace(transformer_config, sequence_parallel=D > 1)
        super().__init__(config=transformer_config)
        self.qwen3_config = config
        # Megatron's training loop reads the model's process groups; the layers stream over the
        # TSP group, so a collection whose tensor-parallel group is another would be a lie
        self.pg_collection = pg_collection or ProcessGroupCollection.use_mpu_process_groups()
        if self.pg_collection.tp is not ps.get_tsp_group():
            raise ValueError("pg_collection.tp must be the TSP group "
                             "(megatron_tsp.parallel_state.get_tsp_group())")
        self.pre_process, self.post_process = pre_process, post_process
        self.padded_vocab_size = config.padded_vocab_size(D)
        self.layer_offset = get_transformer_layer_offset(self.config)
        self._input_tensor = None
        if pre_process:
            self.embedding = TSPEmbedding(self.padded_vocab_size, config.hidden_size, dtype)
        recomputes = layer_recomputes(self.config, get_num_layers_to_build(self.config),
                                      recompute_activations)
        self.decoder = TSPTransformerBlock(config, recomputes, post_process, dtype)
        self.share_embeddings_and_output_weights = config.tie_word_embeddings
        if post_process:
            if config.tie_word_embeddings and pre_process:
                self.output_layer = _TiedOutputLayer()
            else:
                # untied, or tied on a last pipeline stage that lacks the embedding: there, as in
                # GPTModel, a copy of the table whose gradients Megatron's finalize_model_grads
                # all-reduces with the first stage's (embedding group)
                self.output_layer = TSPLinear(self.padded_vocab_size, config.hidden_size, 0,
                                              dtype=dtype)
                if config.tie_word_embeddings:
                    self.output_layer.weight.shared = True
                    self.output_layer.weight.shared_embedding = True

    def output_weight(self) -> torch.Tensor:
        if self.share_embeddings_and_output_weights and self.pre_process:
            return self.embedding.word_embeddings.weight
        return self.output_layer.weight

    def shared_embedding_or_output_weight(self) -> torch.Tensor:
        """The tied table on this stage (Megatron's embedding-group gradient sync calls this)."""
        if self.pre_process:
            return self.embedding.word_embeddings.weight
        return self.output_layer.weight if self.post_process else None

    def set_input_tensor(self, input_tensor) -> None:
        """Megatron's pipeline schedules hand a non-first stage its input here."""
        if isinstance(input_tensor, (list, tuple)):
            assert len(input_tensor) == 1
            input_tensor = input_tensor[0]
        self._input_tensor = input_tensor

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                documents: Optional[PackedDocuments] = None) -> torch.Tensor:
        """input_ids, position_ids, labels [b, s] (local shard) -> loss [b, s] (fp32), or
        logits [b, s, Vp] when labels is None. attention_mask is accepted for GPTModel's
        signature and must be None: attention is causal by construction, over each of the packed
        `documents` (megatron_tsp.documents, made for this rank's chunks) when given."""
        if attention_mask is not None:
            raise ValueError("TSPQwen3Model is causal by construction; pass attention_mask=None")
        cfg = self.qwen3_config
        cos, sin = rotary_cos_sin(position_ids, cfg.kv_channels, cfg.rotary_base, cfg.yarn)
        hidden = self.embedding(input_ids) if self.pre_process else self._input_tensor
        hidden = self.decoder(hidden, cos, sin, documents)
        if not self.post_process:
            return hidden
        if labels is None:
            return vocab_logits(hidden, self.output_weight(), cfg.vocab_size).transpose(0, 1)
        return vocab_cross_entropy(hidden, self.output_weight(), labels.t(), cfg.vocab_size).t()

    def _global_name(self, name: str) -> str:
        """decoder.layers.i.* of this stage is layer i + offset of the whole model; a tied
        output layer is the embedding table."""
        if name == "output_layer.weight" and self.share_embeddings_and_output_weights:
            return "embedding.word_embeddings.weight"
        match = _LAYER_NAME.match(name)
        if not match:
            return name
        return f"decoder.layers.{int(match.group(1)) + self.layer_offset}.{match.group(2)}"

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """GPTModel's sharded_state_dict at tensor-parallel size D, holding this model's shards.

        Rather than restating Megatron's checkpoint rules (stacked layer keys, the local spec's
        norm renames, the SwiGLU factory that stores fc1 TP-invariantly, vocab padding, replica
        ids), a GPTModel of the same shape is built on the meta device, asked for its
        sharded_state_dict, and this model's parameters are put in place of the skeleton's.
        Shards are interchangeable because the TSP shards are GPTModel's TP shards
        (layers/linear.py).
        """
        params = dict(self.named_parameters())
        dtype = next(iter(params.values())).dtype
        with torch.device("meta"):
            skeleton = build_mcore_qwen3(self.qwen3_config, ps.get_tsp_world_size(),
                                         params_dtype=dtype, pre_process=self.pre_process,
                                         post_process=self.post_process,
                                         pipeline_model_parallel_size=self.config
                                         .pipeline_model_parallel_size)
        sharded = skeleton.sharded_state_dict(prefix, sharded_offsets, metadata)
        used = set()
        for name, item in sharded.items():
            param_name = name[len(prefix):]
            if param_name not in params:
                assert param_name.endswith("_extra_state"), name
                continue
            assert tuple(item.data.shape) == tuple(params[param_name].shape), name
            item.data = params[param_name]
            used.add(param_name)
        assert used == params.keys(), sorted(params.keys() - used)
        return sharded

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Draw every full weight from (seed, name), then keep this rank's shard: D-independent.

        Normal(0, init_method_std); output projections (linear_proj, linear_fc2) use
        std / sqrt(2 * num_layers) like Megatron; norms are ones; padded vocabulary rows zero.
        """
        cfg, D, p = self.qwen3_config, ps.get_tsp_world_size(), ps.get_tsp_rank()
        for local_name, param in self.named_parameters():
            name = self._global_name(local_name)
            if not is_sharded(param):
                param.fill_(1.0)
                continue
            std = cfg.init_method_std
            if name.endswith(_OUTPUT_PROJECTIONS):
                std /= math.sqrt(2.0 * cfg.num_layers)
            if name in _VOCAB_TABLES:
                full = torch.zeros(param.tsp_full_shape)
                full[:cfg.vocab_size] = draw_full_normal(seed, name,
                                                         (cfg.vocab_size, cfg.hidden_size), std)
            else:
                full = draw_full_normal(seed, name, param.tsp_full_shape, std)
            param.copy_(shard_of(full, param, p, D))


def build_tsp_qwen3(config: Qwen3Config, recompute_mode: str = "none",
                    dtype: torch.dtype = torch.float32) -> TSPQwen3Model:
    """TSPQwen3Model recomputing by one of the named modes of layers/recompute.py, as the
    Megatron flags of that mode would build it."""
    fields, activations = MODES[recompute_mode]
    return TSPQwen3Model(config, _transformer_config(config, dtype, **fields), dtype=dtype,
                         recompute_activations=activations)
