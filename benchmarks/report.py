"""The benchmark's outputs: the JSON (stable schema), a Markdown table and PNG plots.

JSON schema, version 1 (sizes in bytes, times in seconds; `*_max` is the maximum over ranks):

    schema_version            int    1
    benchmark                 str    "compare_parallelism"
    created_utc               str    ISO 8601
    command                   str    the command line
    machine                   dict   platform, cpu_count, torch, megatron_core, device
    network                   dict   mode "loopback" | "emulated"; bandwidth_mbit, latency_ms
    memory_method             str    how peak memory was measured (benchmarks/memory.py)
    model                     dict   the Qwen3Config fields
    group_size                int    D
    micro_batch_size          int
    dtype                     str
    seq_lengths               list   of int
    runs                      list   one per (scheme, sequence length):
      scheme, group_size (1 for single), seq_length, tokens_per_step, loss, step_time_s (median
      over measured steps of the slowest rank), tokens_per_s (tokens of the group per second),
      matmul_gflops_per_rank (mean over ranks), peak_bytes_max, sent_bytes_max,
      received_bytes_max, predicted {peak_bytes, sent_bytes, received_bytes} (megatron_tsp
      planner), per_rank: list of {rank, peak_bytes, live_at_start_bytes, forward_end_bytes,
      rss_start_bytes, rss_peak_bytes, params_bytes, grads_bytes, optimizer_bytes, step_time_s
      (list), transfers {kind: {sent, received}}}
"""

import json
import statistics
from pathlib import Path
from typing import Dict, List

SCHEMA_VERSION = 1
TOP_LEVEL_TYPES = {
    "schema_version": int, "benchmark": str, "created_utc": str, "command": str,
    "machine": dict, "network": dict, "memory_method": str, "model": dict, "group_size": int,
    "micro_batch_size": int, "dtype": str, "seq_lengths": list, "runs": list,
}
RUN_TYPES = {
    "scheme": str, "group_size": int, "seq_length": int, "tokens_per_step": int, "loss": float,
    "step_time_s": float, "tokens_per_s": float, "matmul_gflops_per_rank": float,
    "peak_bytes_max": int, "sent_bytes_max": int, "received_bytes_max": int, "predicted": dict,
    "per_rank": list,
}
RANK_TYPES = {
    "rank": int, "peak_bytes": int, "live_at_start_bytes": int, "forward_end_bytes": int,
    "rss_start_bytes": int, "rss_peak_bytes": int, "params_bytes": int, "grads_bytes": int,
    "optimizer_bytes": int, "step_time_s": list, "transfers": dict,
}
PREDICTED_TYPES = {"peak_bytes": int, "sent_bytes": int, "received_bytes": int}
MIB = 2 ** 20


def _total(transfers: Dict[str, Dict[str, int]], direction: str) -> int:
    return sum(t[direction] for t in transfers.values())


def run_record(scheme: str, group_size: int, seq_length: int, micro_batch_size: int,
               ranks: List[dict], index: int, predicted: dict) -> dict:
    """One `runs` entry from what each rank measured at the `index`-th length."""
    per_rank = []
    for r in ranks:
        m = r["lengths"][index]
        per_rank.append({
            "rank": r["rank"], "peak_bytes": m["memory"]["peak_bytes"],
            "live_at_start_bytes": m["memory"]["live_at_start_bytes"],
            "forward_end_bytes": m["memory"]["marks"]["forward_end"],
            "rss_start_bytes": m["memory"]["rss_start_bytes"],
            "rss_peak_bytes": m["memory"]["rss_peak_bytes"],
            "params_bytes": m["params_bytes"], "grads_bytes": m["grads_bytes"],
            "optimizer_bytes": m["optimizer_bytes"], "step_time_s": m["step_time_s"],
            "transfers": m["transfers"],
        })
    # a step ends when its slowest rank ends
    step_times = [max(times) for times in zip(*(p["step_time_s"] for p in per_rank))]
    step_time = statistics.median(step_times)
    tokens = micro_batch_size * seq_length
    return {
        "scheme": scheme, "group_size": group_size, "seq_length": seq_length,
        "tokens_per_step": tokens, "loss": float(ranks[0]["lengths"][index]["loss"]),
        "step_time_s": step_time, "tokens_per_s": tokens / step_time,
        "matmul_gflops_per_rank": statistics.mean(r["matmul_gflops"] for r in ranks),
        "peak_bytes_max": max(p["peak_bytes"] for p in per_rank),
        "sent_bytes_max": max(_total(p["transfers"], "sent") for p in per_rank),
        "received_bytes_max": max(_total(p["transfers"], "received") for p in per_rank),
        "predicted": predicted, "per_rank": per_rank,
    }


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def markdown(results: dict) -> str:
    """Tables per sequence length: memory, bytes, time, planner prediction, loss."""
    model, net = results["model"], results["network"]
    link = ("loopback" if net["mode"] == "loopback" else
            f"emulated link {net['bandwidth_mbit']} Mbit/s, {net['latency_ms']} ms")
    lines = [
        f"# Parallelism comparison: D = {results['group_size']}, {link}", "",
        f"Model: {model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_attention_heads']} heads, {model['num_query_groups']} kv heads, head dim "
        f"{model['kv_channels']}, FFN {model['ffn_hidden_size']}, vocab {model['vocab_size']}; "
        f"micro-batch {results['micro_batch_size']}, {results['dtype']}. Machine: "
        f"{results['machine']['cpu_count']} CPU cores ({results['machine']['device']}). "
        f"Memory: {results['memory_method']}.", "",
        "Per rank, maximum over the ranks; MiB = 2^20 bytes; step time of the slowest rank; "
        "`x tsp` = step time / TSP's step time (same run, side by side).", "",
    ]
    for seq_length in results["seq_lengths"]:
        runs = [r for r in results["runs"] if r["seq_length"] == seq_length]
        tsp_time = next((r["step_time_s"] for r in runs if r["scheme"] == "tsp"), None)
        lines += [f"## {seq_length} tokens", "",
                  "| scheme | D | peak MiB | planner MiB | sent MiB | received MiB | "
                  "step s | x tsp | tokens/s | loss |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            ratio = f"{r['step_time_s'] / tsp_time:.2f}" if tsp_time else "-"
            lines.append(
                f"| {r['scheme']} | {r['group_size']} | {r['peak_bytes_max'] / MIB:.1f} | "
                f"{r['predicted']['peak_bytes'] / MIB:.1f} | {r['sent_bytes_max'] / MIB:.1f} | "
                f"{r['received_bytes_max'] / MIB:.1f} | {r['step_time_s']:.2f} | {ratio} | "
                f"{r['tokens_per_s']:.0f} | {r['loss']:.5f} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, directory: Path, prefix: str) -> List[Path]:
    """PREFIX_memory_per_rank.png, PREFIX_bytes_per_rank.png, PREFIX_step_time.png: one line
    per scheme against the sequence length."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schemes = list(dict.fromkeys(r["scheme"] for r in results["runs"]))
    model, net = results["model"], results["network"]
    link = "loopback" if net["mode"] == "loopback" else f"{net['bandwidth_mbit']:g} Mbit/s link"
    title = (f"D = {results['group_size']}, {link}; {model['num_layers']} layers, hidden "
             f"{model['hidden_size']}")

    def series(key, scheme, scale):
        runs = [r for r in results["runs"] if r["scheme"] == scheme]
        return [r["seq_length"] for r in runs], [key(r) / scale for r in runs]

    panels = {
        "memory_per_rank.png": [("peak memory per rank (MiB)", lambda r: r["peak_bytes_max"],
                                 MIB)],
        "bytes_per_rank.png": [("sent per rank per step (MiB)", lambda r: r["sent_bytes_max"],
                                MIB),
                               ("received per rank per step (MiB)",
                                lambda r: r["received_bytes_max"], MIB)],
        "step_time.png": [("step time (s)", lambda r: r["step_time_s"], 1.0)],
    }
    written = []
    for name, axes_spec in panels.items():
        fig, axes = plt.subplots(1, len(axes_spec), figsize=(6 * len(axes_spec), 4.2),
                                 squeeze=False)
        for ax, (label, key, scale) in zip(axes[0], axes_spec):
            for scheme in schemes:
                xs, ys = series(key, scheme, scale)
                ax.plot(xs, ys, marker="o", label=scheme)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length (tokens)")
            ax.set_ylabel(label)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = directory / f"{prefix}_{name}"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
