"""Tokenize JSONL or plain text into a Megatron indexed dataset (.bin/.idx) for --data-path.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-model /path/to/local/tokenizer_dir
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import megatron_tsp  # noqa: E402,F401  (megatron-core adaptations before megatron imports)
from megatron_tsp.training.preprocess import preprocess  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help=".jsonl/.json (one document per line) or .txt (one per file), "
                             "optionally .gz")
    parser.add_argument("--output-prefix", required=True,
                        help="writes <prefix>_<json-key>_document.bin/.idx")
    parser.add_argument("--tokenizer-model", required=True,
                        help="local directory of a Hugging Face tokenizer (no hub access)")
    parser.add_argument("--json-keys", default="text", help="key of the text in each JSON line")
    parser.add_argument("--no-append-eod", action="store_true",
                        help="do not append the end-of-document token")
    args = parser.parse_args(argv)
    try:
        prefix = preprocess(args.input, args.output_prefix, args.tokenizer_model,
                            args.json_keys, append_eod=not args.no_append_eod)
    except ValueError as error:
        parser.exit(2, f"preprocess_data.py: error: {error}\n")
    print(f"wrote {prefix}.bin and {prefix}.idx; train with --data-path {prefix}")


if __name__ == "__main__":
    main()
