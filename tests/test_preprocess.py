"""tools/preprocess_data.py writes an indexed dataset that Megatron's reader gives back exactly;
a bad input line stops it, naming the file and the line, with nothing written."""

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_tsp.training.preprocess import load_tokenizer, preprocess

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "megatron_tsp" / "data" / "tokenizer")
TEXTS = ["To be, or not to be, that is the question:", "Out, damned spot! out, I say!",
         "O Romeo, Romeo! wherefore art thou Romeo?"]


def _expected(texts):
    tokenizer = load_tokenizer(TOKENIZER)
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for t in texts]


def test_jsonl_round_trip_through_the_cli(tmp_path):
    source = tmp_path / "docs.jsonl.gz"
    with gzip.open(source, "wt") as f:
        f.writelines(json.dumps({"content": t}) + "\n" for t in TEXTS)
    subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess_data.py"), "--input",
                    str(source), "--output-prefix", str(tmp_path / "out"), "--tokenizer-model",
                    TOKENIZER, "--json-keys", "content"], check=True, capture_output=True)
    dataset = IndexedDataset(str(tmp_path / "out_content_document"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == _expected(TEXTS)


def test_plain_text_is_one_document_per_file(tmp_path):
    files = []
    for i, text in enumerate(TEXTS[:2]):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text)
    prefix = preprocess([str(f) for f in files], str(tmp_path / "plain"), TOKENIZER)
    dataset = IndexedDataset(prefix)
    assert [dataset[i].tolist() for i in range(len(dataset))] == _expected(TEXTS[:2])


@pytest.mark.parametrize("name, content, message", [
    ("docs.jsonl", b'{"text": "fine"}\n{"body": "no text key"}\n', 'docs.jsonl:2: no "text" key'),
    ("docs.jsonl", b'{"text": "fine"}\n\n{"text": null}\n', 'docs.jsonl:3: "text" is null'),
    ("docs.jsonl", b'{"text": 5}\n', 'docs.jsonl:1: "text" is a number'),
    ("docs.jsonl", b'{"text": ["a", "b"]}\n', 'docs.jsonl:1: "text" is a list'),
    ("docs.jsonl", b'["text"]\n', "docs.jsonl:1: not a JSON object but a list"),
    ("docs.jsonl", b'{"text": "cut\n', "docs.jsonl:1: not valid JSON"),
    ("docs.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "docs.jsonl:2: not UTF-8 text"),
    ("docs.txt", b"fine\ncaf\xe9\n", "docs.txt:2: not UTF-8 text (byte 0xe9"),
    ("docs.csv", b"a,b\n", "unknown format"),
], ids=["no key", "null", "number", "list", "not an object", "not JSON", "not UTF-8",
        "text file not UTF-8", "unknown format"])
def test_bad_input_is_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        preprocess([str(path)], str(tmp_path / "out"), TOKENIZER)
    assert not list(tmp_path.glob("out*"))


def test_the_cli_names_the_file_and_line_of_a_bad_line(tmp_path):
    source = tmp_path / "docs.jsonl.gz"
    with gzip.open(source, "wb") as f:
        f.write(b'{"text": "fine"}\n{"text": "\xff"}\n')
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "preprocess_data.py"),
                             "--input", str(source), "--output-prefix", str(tmp_path / "out"),
                             "--tokenizer-model", TOKENIZER], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"preprocess_data.py: error: {source}:2: not UTF-8 text" in result.stderr, (
        result.stderr[-2000:])
    assert not list(tmp_path.glob("out*"))


def test_missing_tokenizer_directory_is_named(tmp_path):
    (tmp_path / "d.txt").write_text("text")
    with pytest.raises(ValueError, match="--tokenizer-model"):
        preprocess([str(tmp_path / "d.txt")], str(tmp_path / "out"), str(tmp_path / "none"))
