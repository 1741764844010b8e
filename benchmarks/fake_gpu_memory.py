"""Peak GPU memory per rank of a TSP training step, on fake CUDA tensors, beside the planner.

    python -m benchmarks.fake_gpu_memory [--settings 8b:2:131072:8 8b:36:131072:8 ...]

Each setting (model size : layers : sequence length : D) runs tests/fake_gpu_step.py as the
first and the last rank of the group (fake process group, FakeTensorMode, bf16, micro-batch 1,
two iterations so Adam's state exists): the step's real code at the real shape, with torch's
MemTracker counting every storage it makes. The planner's prediction
(megatron_tsp.planner.memory, a flash attention kernel, no distributed optimizer) stands beside
it. Writes benchmarks/results/NAME.{json,md} and prints the table.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from megatron_tsp.config import qwen3_preset
from megatron_tsp.planner.transfers import Layout
from megatron_tsp.planner.memory import memory_bytes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BF16, GB = 2, 1e9
DEFAULT_SETTINGS = ["8b:2:131072:8", "1.7b:4:32768:1", "1.7b:4:32768:4"]


def measure(model_size: str, layers: int, seq_length: int, tsp_size: int, rank: int) -> dict:
    command = [sys.executable, str(ROOT / "tests" / "fake_gpu_step.py"), "--rank", str(rank),
               "--tsp-size", str(tsp_size), "--model-size", model_size, "--num-layers",
               str(layers), "--seq-length", str(seq_length), "--dtype", "bf16"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        metavar="SIZE:LAYERS:SEQ:D")
    parser.add_argument("--name", default="fake_gpu_memory",
                        help="results are written to benchmarks/results/NAME.{json,md}")
    args = parser.parse_args(argv)
    rows = []
    for setting in args.settings:
        size, layers, seq_length, tsp_size = setting.split(":")
        layers, seq_length, tsp_size = int(layers), int(seq_length), int(tsp_size)
        cfg = qwen3_preset(size).replace(num_layers=layers)
        planned = memory_bytes(Layout("tsp", tp=tsp_size, recompute="full"), cfg, seq_length, 1, BF16)
        for rank in sorted({0, tsp_size - 1}):
            report = measure(size, layers, seq_length, tsp_size, rank)
            rows.append({"model_size": size, "num_layers": layers, "seq_length": seq_length,
                         "tsp_size": tsp_size, "rank": rank, "peak_bytes": report["peak_bytes"],
                         "predicted_bytes": planned.total,
                         "clean": not (report["off_device"] or report["host_syncs"]
                                       or report["score_shaped"] or report["wrong_grads"])})
            print(f"{setting} rank {rank}: {report['peak_bytes'] / GB:.2f} GB", flush=True)
    lines = ["| Qwen3 shape | layers | tokens | D | rank | measured peak (GB, fake tensors) | "
             "planner (GB) | measured / planner | audit clean |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['model_size']} | {r['num_layers']} | {r['seq_length']:,} | "
                     f"{r['tsp_size']} | {r['rank']} | {r['peak_bytes'] / GB:.2f} | "
                     f"{r['predicted_bytes'] / GB:.2f} | "
                     f"{r['peak_bytes'] / r['predicted_bytes']:.3f} | {r['clean']} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"benchmark": "fake_gpu_memory", "dtype": "bf16", "micro_batch_size": 1,
         "memory_method": "torch MemTracker over FakeTensorMode storage", "runs": rows},
        indent=1))
    (RESULTS / f"{args.name}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
