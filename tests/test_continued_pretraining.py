"""The conversion workflow end to end: a Hugging Face Qwen3 imported with
tools/convert_checkpoint.py, trained on with pretrain_qwen3.py --load at --tsp-size 2, saved,
exported back, and read by transformers. Every sample of the dataset is the same sequence, so the
loss Megatron logs at an iteration is transformers' loss on that sequence with the weights of
that moment. The model's shape and vocabulary come from the imported checkpoint
(--use-checkpoint-args), its table larger than the tokenizer as a released Qwen3's."""

import re

import numpy
import pytest
import torch
import torch.nn.functional as F

from tests.hf_models import HF_SHAPE, hf_model
from tests.pretrain_runner import convert, run_pretrain

pytestmark = pytest.mark.slow
SEQ = 64


def _repeated_dataset(prefix, pattern):
    """Documents of the pattern repeated: GPTDataset's samples start at multiples of SEQ, so each
    sample is pattern + its first token (the last label)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for _ in range(20):
        document = pattern.repeat(4)
        builder.add_document(document, [len(document)])
    builder.finalize(f"{prefix}.idx")


def _hf_loss(model, tokens):
    with torch.no_grad():
        logits = model(input_ids=tokens[:-1].unsqueeze(0)).logits[0]
    return F.cross_entropy(logits.float(), tokens[1:]).item()


def test_import_train_export_keeps_transformers_loss(tmp_path):
    import transformers
    model = hf_model(tie=False)
    model.save_pretrained(tmp_path / "hf")
    convert("import-hf", "--hf-path", tmp_path / "hf", "--save", tmp_path / "imported",
            "--dtype", "fp32")
    # a tokenizer smaller than the model's table, as a released Qwen3's (151,669 tokens for
    # 151,936 rows): every row is still scored, as transformers scores them
    tokenizer_size = HF_SHAPE["vocab_size"] - 12
    pattern = torch.randint(0, tokenizer_size, (SEQ,), generator=torch.Generator().manual_seed(3))
    _repeated_dataset(tmp_path / "repeated", pattern)
    sample = torch.cat([pattern, pattern[:1]])
    code, losses, log = run_pretrain(
        2, ["--tsp-size", "2", "--load", tmp_path / "imported", "--data-path",
            tmp_path / "repeated", "--split", "50,50,0", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", tokenizer_size,
            "--use-checkpoint-args", "--seq-length", SEQ,
            "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "4",
            "--lr", "1e-3", "--lr-decay-style", "constant", "--log-interval", "1",
            "--eval-interval", "4", "--eval-iters", "1", "--save", tmp_path / "trained",
            "--save-interval", "4"], tmp_path / "cache")
    assert code == 0, log[-5000:]
    before = _hf_loss(model, sample)
    assert abs(losses[1] - before) <= 1e-5 * before, (losses[1], before)
    # the validation loss after the 4th update: the weights that were saved
    trained = float(re.search(r"validation loss at iteration\s+4 \| lm loss value: ([0-9.E+-]+)",
                              log).group(1))
    assert trained < losses[1] - 0.05
    convert("export-hf", "--load", tmp_path / "trained", "--hf-path", tmp_path / "exported",
            "--dtype", "fp32")
    exported = transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / "exported").eval()
    after = _hf_loss(exported, sample)
    assert abs(trained - after) <= 1e-5 * after, (trained, after)
