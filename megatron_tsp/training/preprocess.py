"""Text -> Megatron indexed dataset (.bin/.idx) with a Hugging Face tokenizer read from disk.

Inputs: JSON lines (`.jsonl`, `.json`, optionally `.gz`; one document per line under a key) or
plain text (`.txt`, optionally `.gz`; one document per file). Each document is tokenized, the
end-of-document token appended, and written as one document of Megatron's IndexedDataset, under
Megatron's naming `<output-prefix>_<json-key>_document.{bin,idx}`. A line that is not UTF-8,
not a JSON object, or whose text is missing or not a string stops the run naming the file and the
line; the dataset is written under temporary names and appears only when whole.
"""

import gzip
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder


def _open_text(path: Path):
    # bytes that are not UTF-8 become lone surrogates (UTF-8 never decodes to one) and are
    # reported by _utf8 with their line: a strict decoder fails on a whole chunk, naming no line
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


def _utf8(text: str, path: Path, line_number: int) -> str:
    """text (starting at line_number of path), or ValueError naming the line of its first byte
    that is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        line_number += text.count("\n", 0, error.start)
        raise ValueError(f"{path}:{line_number}: not UTF-8 text (byte "
                         f"{ord(text[error.start]) - 0xDC00:#04x})") from None
    return text


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
               str: "a string", list: "a list", dict: "an object"}


def _document(line: str, path: Path, line_number: int, json_key: str) -> str:
    where = f"{path}:{line_number}"
    try:
        record = json.loads(_utf8(line, path, line_number))
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object but {_JSON_TYPES[type(record)]}")
    if json_key not in record:
        raise ValueError(f'{where}: no "{json_key}" key (--json-keys names the key of the text)')
    text = record[json_key]
    if not isinstance(text, str):
        raise ValueError(f'{where}: "{json_key}" is {_JSON_TYPES[type(text)]}, not a string')
    return text


def _format(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith((".jsonl", ".json")):
        return "json"
    if name.endswith(".txt"):
        return "text"
    raise ValueError(f"--input {path}: unknown format; use .jsonl, .json or .txt (optionally .gz)")


def read_documents(paths: Sequence[Path], json_key: str) -> Iterator[str]:
    for path in paths:
        with _open_text(path) as f:
            if _format(path) == "text":
                yield _utf8(f.read(), path, 1)
                continue
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    yield _document(line, path, line_number, json_key)


def load_tokenizer(tokenizer_dir: str):
    """A Hugging Face tokenizer from a local directory; never the hub."""
    if not (Path(tokenizer_dir) / "tokenizer_config.json").is_file() and not (
            Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise ValueError(f"--tokenizer-model {tokenizer_dir}: not a tokenizer directory "
                         "(no tokenizer.json or tokenizer_config.json)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)


def _write(texts: Iterator[str], tokenizer, bin_path: str, idx_path: str,
           append_eod: bool) -> int:
    builder = IndexedDatasetBuilder(bin_path, dtype=DType.optimal_dtype(len(tokenizer)))
    documents = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if append_eod:
            ids.append(tokenizer.eos_token_id)
        if ids:
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
            documents += 1
    builder.finalize(idx_path)
    return documents


def output_prefix_for(output_prefix: str, json_key: str) -> str:
    return f"{output_prefix}_{json_key}_document"


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer_dir: str,
               json_key: str = "text", append_eod: bool = True) -> str:
    """Write the indexed dataset; returns its path prefix (what --data-path takes)."""
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"--input {path}: no such file")
        _format(path)
    tokenizer = load_tokenizer(tokenizer_dir)
    if append_eod and tokenizer.eos_token_id is None:
        raise ValueError(f"--tokenizer-model {tokenizer_dir}: has no end-of-document (eos) token")
    prefix = output_prefix_for(output_prefix, json_key)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    # write under temporary names and rename at the end: an interrupted or failed run leaves no
    # dataset that looks complete, and ranks preparing the same dataset never collide
    tmp = f".tmp{os.getpid()}"
    bin_tmp, idx_tmp = prefix + ".bin" + tmp, prefix + ".idx" + tmp
    try:
        documents = _write(read_documents(paths, json_key), tokenizer, bin_tmp, idx_tmp,
                           append_eod)
        if documents == 0:
            raise ValueError(f"--input {', '.join(map(str, paths))}: no documents found")
    except BaseException:
        for path in (bin_tmp, idx_tmp):
            if os.path.exists(path):
                os.remove(path)
        raise
    os.replace(bin_tmp, prefix + ".bin")
    os.replace(idx_tmp, prefix + ".idx")
    return prefix
