"""Data for pretrain_qwen3.py: Megatron GPT datasets, the embedded corpus, and the batch a TSP rank
trains on.

Every rank of a TSP group reads the same global sample (Megatron's TP-rank broadcast); the
sequence-shard hook then cuts tokens, labels and loss mask to the rank's zigzag shard, and the
position ids to the global positions of the local tokens (GPTModel's RoPE positions: 0..S-1).
"""

from functools import partial

import numpy
from megatron.core import mpu
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
from megatron.core.utils import get_batch_on_this_tp_rank
from megatron.training import get_args, get_tokenizer, print_rank_0
from megatron.training.utils import get_blend_and_blend_per_split, is_first_or_last_pipeline_stage

from megatron_tsp import parallel_state as ps
from megatron_tsp.device import compute_device
from megatron_tsp.documents import packed_documents
from megatron_tsp.layout import local_chunks, local_token_index, scatter_to_local
from megatron_tsp.training.arguments import EMBEDDED_DATA, embedded_dataset_prefix
from megatron_tsp.training.preprocess import preprocess

# no attention_mask: TSP attention is causal by construction (over each packed document with
# --reset-attention-mask, from offsets), so the S x S mask Megatron's dataset can build (16 GiB
# of bools per sample at 128K tokens) is never built, moved or broadcast
_BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def prepare_embedded_data(args) -> None:
    """Tokenize the shipped corpus once (every rank may race here: the write is atomic)."""
    prefix = embedded_dataset_prefix()
    if args.data_path != [str(prefix)] or prefix.with_suffix(".idx").is_file():
        return
    source = EMBEDDED_DATA / "shakespeare_tragedies.jsonl.gz"
    preprocess([str(source)], str(prefix).removesuffix("_text_document"), args.tokenizer_model)


def _full_batch(data_iterator, args):
    """Megatron's batch on every TSP rank: TP rank 0 reads, the others receive it."""
    batch = {}
    if mpu.get_tensor_model_parallel_rank() == 0:
        batch = next(data_iterator)
        batch = {key: batch[key].to(compute_device(), non_blocking=True)
                 if batch.get(key) is not None else None for key in _BATCH_KEYS}
    batch = get_batch_on_this_tp_rank(
        batch, has_cu_seqlens=False, is_hybrid_cp=False,
        create_attention_mask_in_dataloader=False,
        broadcast_src_rank=mpu.get_tensor_model_parallel_src_rank(),
        broadcast_group=mpu.get_tensor_model_parallel_group(),
        cp_size=args.context_parallel_size, tp_rank=mpu.get_tensor_model_parallel_rank(),
        micro_batch_size=args.micro_batch_size, seq_length=args.seq_length,
        mtp_on_this_rank=False, pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        is_pipeline_first_stage=mpu.is_pipeline_first_stage(),
        is_pipeline_last_stage=mpu.is_pipeline_last_stage())
    return batch


def packs_documents(args) -> bool:
    """Megatron's packed-document flags: positions restart after each EOD, or a token attends
    only to its own document."""
    return args.reset_position_ids or args.reset_attention_mask


def get_local_batch(data_iterator, vp_stage=None):
    """tokens, labels, loss_mask [b, S/D] (None on middle pipeline stages), position ids, and the
    packed documents (megatron_tsp.documents; None without --reset-attention-mask)."""
    args = get_args()
    if packs_documents(args):
        return _packed_local_batch(data_iterator, args, vp_stage)
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    positions = local_token_index(args.seq_length, p, D, device=compute_device())
    positions = positions.unsqueeze(0).expand(args.micro_batch_size, -1)
    if not is_first_or_last_pipeline_stage(vp_stage):
        return None, None, None, positions, None
    batch = _full_batch(data_iterator, args)
    local = [scatter_to_local(batch[key], dim=1) if batch.get(key) is not None else None
             for key in ("tokens", "labels", "loss_mask")]
    return (*local, positions, None)


def _packed_local_batch(data_iterator, args, vp_stage):
    """Packed documents: the positions come from the dataset (Megatron's reset position ids) and
    the document offsets are made on the host from the tokens the data loader made there, so
    nothing is read back from the device. For that every rank of every pipeline stage reads its
    samples itself (the same samples: the loader's order depends only on the seed and the
    consumed samples) rather than receiving them from TP rank 0, and middle stages read them for
    the positions and documents alone."""
    D, p = ps.get_tsp_world_size(), ps.get_tsp_rank()
    batch, device = next(data_iterator), compute_device()
    documents = None
    if args.reset_attention_mask:
        documents = packed_documents(batch["tokens"], get_tokenizer().eod, local_chunks(p, D),
                                     2 * D, device)
    # moved as the loader made them (pinned), then cut on the device: a non-blocking copy of
    # a pageable cut would make the host wait
    keys = _BATCH_KEYS if is_first_or_last_pipeline_stage(vp_stage) else ("position_ids",)
    local = {key: scatter_to_local(batch[key].to(device, non_blocking=True), dim=1)
             for key in keys}
    return (local.get("tokens"), local.get("labels"), local.get("loss_mask"),
            local["position_ids"], documents)


def _dataset_config(args) -> GPTDatasetConfig:
    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=blend,
        blend_per_split=blend_per_split, split=args.split,
        num_dataset_builder_threads=args.num_dataset_builder_threads,
        path_to_cache=args.data_cache_path, mmap_bin_files=args.mmap_bin_files,
        tokenizer=build_tokenizer(args), reset_position_ids=args.reset_position_ids,
        allow_ambiguous_pad_tokens=args.allow_ambiguous_pad_tokens,
        reset_attention_mask=args.reset_attention_mask, eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=False,
        context_parallel_size=args.context_parallel_size,
        data_parallel_size=args.data_parallel_size, sequence_parallel_size=0)


class VocabularyCheckedGPTDataset(GPTDataset):
    """Megatron's GPTDataset, refusing a sample that holds a token id outside the tokenizer's
    vocabulary as it is read. Such an id trains silently on CPU at tsp 1 (the loss is wrong) and
    turns the loss non-finite elsewhere, never naming the data; a full pass over a terabyte .bin
    at launch would cost minutes, while a max over one sample is microseconds."""

    def _query_document_sample_shuffle_indices(self, idx):
        text, document_ids, document_lengths = super()._query_document_sample_shuffle_indices(idx)
        tokens = text[:sum(document_lengths)]  # then the padding id, which may be -1
        vocab_size = self.config.tokenizer.vocab_size
        if tokens.size and (tokens.max() >= vocab_size or tokens.min() < 0):
            first = int(numpy.flatnonzero((tokens >= vocab_size) | (tokens < 0))[0])
            part = int(numpy.searchsorted(numpy.cumsum(document_lengths), first, side="right"))
            raise ValueError(
                f"--data-path {self.dataset.path_prefix}: document {document_ids[part]} holds "
                f"token id {tokens[first]}, outside the tokenizer's vocabulary of {vocab_size} "
                "(--vocab-size, or the --tokenizer-model the data was preprocessed with)")
        return text, document_ids, document_lengths


def _built_on_this_rank(vp_stage=None) -> bool:
    if packs_documents(get_args()):
        return True  # every rank reads its samples (_packed_local_batch)
    return mpu.get_tensor_model_parallel_rank() == 0 and is_first_or_last_pipeline_stage(vp_stage)


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    args = get_args()
    print_rank_0("> building train, validation, and test datasets for Qwen3 ...")
    dataset_type = MockGPTDataset if args.mock_data else VocabularyCheckedGPTDataset
    return BlendedMegatronDatasetBuilder(
        dataset_type, train_val_test_num_samples, partial(_built_on_this_rank, vp_stage),
        _dataset_config(args)).build()


# every reading rank builds its datasets (rather than rank 0 broadcasting them)
train_valid_test_datasets_provider.is_distributed = True
