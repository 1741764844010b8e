"""The benchmark's outputs: the JSON (stable schema), a Markdown table and PNG plots.

JSON schema, version 3 (sizes in bytes, times in seconds; `*_max` is the maximum over ranks):

    schema_version            int    3 (2 lacked exposed_wire_s_max and exposed_split)
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
    repeats                   int    launches of every scheme, interleaved (tsp, tp, ..., tsp, ...)
    runs                      list   one per (scheme, sequence length):
      scheme, group_size (1 for single), seq_length, tokens_per_step, loss, step_time_s (median
      over the repeats of each repeat's median measured step of the slowest rank),
      step_time_repeats_s (list, one per repeat), step_time_spread_s (max - min of those),
      tokens_per_s (tokens of the group per second at the median), matmul_gflops_per_rank (mean
      over ranks), peak_bytes_max, sent_bytes_max, received_bytes_max, exposed_s_max (seconds
      the busiest rank waited on communication in a measured step, median over the repeats),
      exposed_wire_s_max (the same, counting only waits after every rank had posted the
      transfer: benchmarks/exposure.py), exposed_s_by_kind and exposed_wire_s_by_kind {kind:
      seconds, max over ranks, median over the repeats}, predicted
      {peak_bytes, sent_bytes, received_bytes} (megatron_tsp planner), per_rank (of the last
      repeat): list of {rank, peak_bytes, live_at_start_bytes, forward_end_bytes,
      rss_start_bytes, rss_peak_bytes, params_bytes, grads_bytes, optimizer_bytes, step_time_s
      (list), transfers {kind: {sent, received}}, exposed_s (list per measured step of
      {kind: seconds}), exposed_split (list per measured step of {kind: {late_peer, wire}})}
"""

import json
import statistics
from pathlib import Path
from typing import Dict, List

from benchmarks.exposure import split_waits, wire_seconds

SCHEMA_VERSION = 3
TOP_LEVEL_TYPES = {
    "schema_version": int, "benchmark": str, "created_utc": str, "command": str,
    "machine": dict, "network": dict, "memory_method": str, "model": dict, "group_size": int,
    "micro_batch_size": int, "dtype": str, "seq_lengths": list, "repeats": int, "runs": list,
}
RUN_TYPES = {
    "scheme": str, "group_size": int, "seq_length": int, "tokens_per_step": int, "loss": float,
    "step_time_s": float, "step_time_repeats_s": list, "step_time_spread_s": float,
    "tokens_per_s": float, "matmul_gflops_per_rank": float, "peak_bytes_max": int,
    "sent_bytes_max": int, "received_bytes_max": int, "exposed_s_max": float,
    "exposed_wire_s_max": float, "exposed_s_by_kind": dict, "exposed_wire_s_by_kind": dict, "predicted": dict, "per_rank": list,
}
RANK_TYPES = {
    "rank": int, "peak_bytes": int, "live_at_start_bytes": int, "forward_end_bytes": int,
    "rss_start_bytes": int, "rss_peak_bytes": int, "params_bytes": int, "grads_bytes": int,
    "optimizer_bytes": int, "step_time_s": list, "transfers": dict, "exposed_s": list,
    "exposed_split": list,
}
PREDICTED_TYPES = {"peak_bytes": int, "sent_bytes": int, "received_bytes": int}
MIB = 2 ** 20


def _total(transfers: Dict[str, Dict[str, int]], direction: str) -> int:
    return sum(t[direction] for t in transfers.values())


def run_record(scheme: str, group_size: int, seq_length: int, micro_batch_size: int,
               ranks: List[dict], index: int, predicted: dict) -> dict:
    """One `runs` entry from what each rank measured at the `index`-th length."""
    steps = len(ranks[0]["lengths"][index]["timelines"])
    splits = [split_waits([r["lengths"][index]["timelines"][i] for r in ranks])
              for i in range(steps)]  # [step][rank]
    per_rank = []
    for rank_index, r in enumerate(ranks):
        m = r["lengths"][index]
        per_rank.append({
            "rank": r["rank"], "peak_bytes": m["memory"]["peak_bytes"],
            "live_at_start_bytes": m["memory"]["live_at_start_bytes"],
            "forward_end_bytes": m["memory"]["marks"]["forward_end"],
            "rss_start_bytes": m["memory"]["rss_start_bytes"],
            "rss_peak_bytes": m["memory"]["rss_peak_bytes"],
            "params_bytes": m["params_bytes"], "grads_bytes": m["grads_bytes"],
            "optimizer_bytes": m["optimizer_bytes"], "step_time_s": m["step_time_s"],
            "transfers": m["transfers"], "exposed_s": m["exposed_s"],
            "exposed_split": [step[rank_index] for step in splits],
        })
    # a step ends when its slowest rank ends
    step_times = [max(times) for times in zip(*(p["step_time_s"] for p in per_rank))]
    step_time = statistics.median(step_times)
    tokens = micro_batch_size * seq_length
    last_steps = [p["exposed_s"][-1] for p in per_rank]
    kinds = sorted({kind for step in last_steps for kind in step})
    return {
        "scheme": scheme, "group_size": group_size, "seq_length": seq_length,
        "tokens_per_step": tokens, "loss": float(ranks[0]["lengths"][index]["loss"]),
        "step_time_s": step_time, "step_time_repeats_s": [step_time],
        "step_time_spread_s": 0.0, "tokens_per_s": tokens / step_time,
        "exposed_s_max": max(sum(step.values()) for step in last_steps),
        "exposed_wire_s_max": max(wire_seconds(split) for split in splits[-1]),
        "exposed_s_by_kind": {k: max(step.get(k, 0.0) for step in last_steps) for k in kinds},
        "exposed_wire_s_by_kind": {
            k: max(split[k]["wire"] if k in split else 0.0 for split in splits[-1]) for k in kinds},
        "matmul_gflops_per_rank": statistics.mean(r["matmul_gflops"] for r in ranks),
        "peak_bytes_max": max(p["peak_bytes"] for p in per_rank),
        "sent_bytes_max": max(_total(p["transfers"], "sent") for p in per_rank),
        "received_bytes_max": max(_total(p["transfers"], "received") for p in per_rank),
        "predicted": predicted, "per_rank": per_rank,
    }


def merge_repeats(records: List[dict]) -> dict:
    """One `runs` entry from the same (scheme, length) measured in several launches: medians
    over the repeats, their spread; memory, bytes and per_rank of the last launch (they do not
    change from one launch to the next)."""
    merged = dict(records[-1])
    times = [r["step_time_s"] for r in records]
    merged["step_time_s"] = statistics.median(times)
    merged["step_time_repeats_s"] = times
    merged["step_time_spread_s"] = max(times) - min(times)
    merged["tokens_per_s"] = merged["tokens_per_step"] / merged["step_time_s"]
    for key in ("exposed_s_max", "exposed_wire_s_max"):
        merged[key] = statistics.median(r[key] for r in records)
    kinds = sorted({k for r in records for k in r["exposed_s_by_kind"]})
    for key in ("exposed_s_by_kind", "exposed_wire_s_by_kind"):
        merged[key] = {k: statistics.median(r[key].get(k, 0.0) for r in records) for k in kinds}
    return merged


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")


def markdown(results: dict) -> str:
    """Tables per sequence length: memory, bytes, time (median of the repeats and their spread),
    exposed communication, planner prediction, loss; then exposed communication by kind."""
    model, net = results["model"], results["network"]
    link = ("loopback" if net["mode"] == "loopback" else
            f"emulated link {net['bandwidth_mbit']} Mbit/s, {net['latency_ms']} ms"
            + (f" ({net['fabric']})" if net.get("fabric") else ""))
    lines = [
        f"# Parallelism comparison: D = {results['group_size']}, {link}", "",
        f"Model: {model['num_layers']} layers, hidden {model['hidden_size']}, "
        f"{model['num_attention_heads']} heads, {model['num_query_groups']} kv heads, head dim "
        f"{model['kv_channels']}, FFN {model['ffn_hidden_size']}, vocab {model['vocab_size']}; "
        f"micro-batch {results['micro_batch_size']}, {results['dtype']}. Machine: "
        f"{results['machine']['cpu_count']} CPU cores ({results['machine']['device']}). "
        f"Memory: {results['memory_method']}.", "",
        f"Per rank, maximum over the ranks; MiB = 2^20 bytes; step time of the slowest rank, "
        f"median of {results['repeats']} interleaved launches (spread = slowest - fastest); "
        "`x tsp` = step time / TSP's step time; exposed = seconds the busiest rank waited on "
        "communication in a step; wire = the same counting only waits after every rank had "
        "posted the transfer (the rest is waiting for a late rank).", "",
    ]
    for seq_length in results["seq_lengths"]:
        runs = [r for r in results["runs"] if r["seq_length"] == seq_length]
        tsp_time = next((r["step_time_s"] for r in runs if r["scheme"] == "tsp"), None)
        lines += [f"## {seq_length} tokens", "",
                  "| scheme | D | peak MiB | planner MiB | sent MiB | received MiB | "
                  "step s | spread s | x tsp | tokens/s | exposed s | exposed % | wire s | "
                  "wire % | loss |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            ratio = f"{r['step_time_s'] / tsp_time:.2f}" if tsp_time else "-"
            lines.append(
                f"| {r['scheme']} | {r['group_size']} | {r['peak_bytes_max'] / MIB:.1f} | "
                f"{r['predicted']['peak_bytes'] / MIB:.1f} | {r['sent_bytes_max'] / MIB:.1f} | "
                f"{r['received_bytes_max'] / MIB:.1f} | {r['step_time_s']:.2f} | "
                f"{r['step_time_spread_s']:.2f} | {ratio} | {r['tokens_per_s']:.0f} | "
                f"{r['exposed_s_max']:.2f} | {100 * r['exposed_s_max'] / r['step_time_s']:.1f} | "
                f"{r['exposed_wire_s_max']:.2f} | "
                f"{100 * r['exposed_wire_s_max'] / r['step_time_s']:.1f} | {r['loss']:.5f} |")
        lines += ["", "Exposed communication by transfer kind (s, busiest rank per kind; in "
                  "brackets, of which on the wire):", ""]
        for r in runs:
            kinds = ", ".join(f"{k} {v:.2f} ({r['exposed_wire_s_by_kind'][k]:.2f})"
                              for k, v in sorted(r["exposed_s_by_kind"].items(),
                                                 key=lambda kv: -kv[1]) if v >= 0.005)
            lines.append(f"- {r['scheme']}: {kinds or 'none'}")
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
