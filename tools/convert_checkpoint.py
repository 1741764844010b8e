"""Convert Qwen3 checkpoints: Hugging Face <-> Megatron torch_dist (any --tsp-size / TP size).

    python tools/convert_checkpoint.py import-hf --hf-path Qwen3-8B --save ckpt/qwen3-8b [--verify]
    python tools/convert_checkpoint.py export-hf --load ckpt/run --hf-path out/qwen3 [--verify]

import-hf may run under torchrun with --tsp-size D (each rank then holds 1/D of the model); the
checkpoint it writes loads at any --tsp-size either way. Neither writes into a non-empty
directory unless --overwrite is given: then the directory is replaced whole, once the conversion
has succeeded.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import megatron_tsp  # noqa: E402,F401  (megatron-core adaptations first)
from megatron_tsp.conversion.convert import DTYPES, export_hf, import_hf  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_megatron = commands.add_parser("import-hf", help="Hugging Face -> torch_dist")
    to_megatron.add_argument("--hf-path", required=True, help="Hugging Face Qwen3 directory")
    to_megatron.add_argument("--save", required=True, help="Megatron checkpoint directory")
    to_megatron.add_argument("--tsp-size", type=int, default=1,
                             help="ranks to convert with (run under torchrun when > 1)")
    to_hf = commands.add_parser("export-hf", help="torch_dist -> Hugging Face")
    to_hf.add_argument("--load", required=True, help="Megatron checkpoint directory")
    to_hf.add_argument("--hf-path", required=True, help="output Hugging Face directory")
    to_hf.add_argument("--max-shard-size-gb", type=float, default=5.0)
    for command in (to_megatron, to_hf):
        command.add_argument("--dtype", choices=sorted(DTYPES),
                             help="dtype of the written weights (default: the source's, so "
                                  "that the conversion is lossless)")
        command.add_argument("--verify", action="store_true",
                             help="compare logits of both sides on random sequences")
        command.add_argument("--overwrite", action="store_true",
                             help="replace a non-empty output directory (refused otherwise): "
                                  "all of it, once the conversion has succeeded")
    args = parser.parse_args(argv)
    try:
        if args.command == "import-hf":
            if args.tsp_size > 1 and int(os.environ.get("WORLD_SIZE", "1")) != args.tsp_size:
                raise ValueError(f"--tsp-size {args.tsp_size}: run under torchrun with "
                                 f"--nproc-per-node {args.tsp_size}")
            import_hf(args.hf_path, args.save, args.tsp_size, args.dtype, args.verify,
                      args.overwrite)
        else:
            export_hf(args.load, args.hf_path, args.dtype, args.verify,
                      int(args.max_shard_size_gb * 2 ** 30), args.overwrite)
    except ValueError as error:
        parser.exit(2, f"convert_checkpoint.py: error: {error}\n")


if __name__ == "__main__":
    main()
