"""Helpers of scripts/gpu_check.sh: read a pretrain_qwen3.py log, compute MFU and the planner's
memory prediction, check SDPA's flash dispatch and the packed documents' varlen kernel. Each
subcommand ends with one line

    RESULT PASS|FAIL|INFO <detail>

which gpu_check.sh puts in its summary table. Only `sdpa` and `varlen` need a GPU.

    python scripts/gpu_check_report.py losses LOG [--expect N]
    python scripts/gpu_check_report.py throughput LOG --model-size 1.7b --num-layers 4 \
        --seq-length 32768 [--micro-batch-size 1] [--peak-tflops 989]
    python scripts/gpu_check_report.py sdpa --seq-length 32768 --model-size 1.7b
    python scripts/gpu_check_report.py varlen [--seq-length 8192]
"""

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_LOSS = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: ([^\s|]+)")
_THROUGHPUT = re.compile(r"tokens/s: ([0-9.eE+-]+|nan|inf) \| peak memory per TSP rank \(MiB\): "
                         r"([0-9., ]+)")
_ITERATION_MS = re.compile(r"iteration\s+\d+/\s*\d+ \|.*?elapsed time per iteration \(ms\): "
                           r"([0-9.]+)")
MEMORY_TOLERANCE = 0.15
# dense bf16 peak FLOP/s by device-name fragment (vendor datasheets; SXM parts)
PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12),
             ("MI300X", 1307e12), ("L40S", 362e12))


def result(status: str, detail: str) -> None:
    print(f"RESULT {status} {detail}", flush=True)


def _error_line(text: str) -> str:
    """The line of a failed run that names the error: the entry point's own refusal, else the
    last exception raised in the rank (not torchrun's ChildFailedError), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    patterns = (r"pretrain_qwen3\.py: error:",
                r"^(\[[^\]]*\]:?\s*)?([\w.]+)?(Error|Exception)\b.*?: (?!.*ChildFailedError)",
                r"(CUDA error|No module named|out of memory)")
    for pattern in patterns:
        for line in reversed(lines):
            if re.search(pattern, line) and "ChildFailedError" not in line:
                return line[:200]
    return (lines or ["(empty log)"])[-1][:200]


# --- (a) losses -----------------------------------------------------------------------------

def losses(text: str):
    """{iteration: loss} of Megatron's iteration lines (the value as logged, nan/inf included)."""
    return {int(i): float(v) for i, v in _LOSS.findall(text)}


def cmd_losses(args) -> int:
    text = Path(args.log).read_text(errors="replace")
    found = losses(text)
    if not found:
        result("FAIL", f"no 'lm loss' in the log: {_error_line(text)}")
        return 1
    bad = {i: v for i, v in found.items() if not math.isfinite(v)}
    first, last = found[min(found)], found[max(found)]
    detail = (f"{len(found)} iterations, lm loss {first:.4f} (it {min(found)}) -> {last:.4f} "
              f"(it {max(found)})")
    if bad:
        result("FAIL", f"non-finite loss at iterations {sorted(bad)}; {detail}")
        return 1
    if args.expect and len(found) < args.expect:
        result("FAIL", f"only {detail} of {args.expect} expected: {_error_line(text)}")
        return 1
    result("PASS", f"all finite: {detail}")
    return 0


# --- (b) throughput and MFU, (d) memory against the planner ---------------------------------

def model_config(model_size: str, num_layers=None):
    from megatron_tsp.config import qwen3_preset
    cfg = qwen3_preset(model_size)
    return cfg.replace(num_layers=num_layers) if num_layers else cfg


def flops_per_token(cfg, seq_length: int, recompute: bool = False) -> float:
    """Model FLOPs per token, or with `recompute` the hardware FLOPs of TSP's full recompute (the
    mode this check runs): megatron_tsp.planner.flops."""
    from megatron_tsp.planner.transfers import Layout
    from megatron_tsp.planner.flops import hardware_flops_per_token, model_flops_per_token
    if recompute:
        return float(hardware_flops_per_token(Layout("tsp", recompute="full"), cfg, seq_length))
    return float(model_flops_per_token(cfg, seq_length))


def peak_flops(device_name: str, override_tflops=None) -> float:
    if override_tflops:
        return override_tflops * 1e12
    for fragment, flops in PEAK_BF16:
        if fragment.lower() in device_name.lower():
            return flops
    raise ValueError(f"unknown peak bf16 FLOP/s for {device_name!r}: pass --peak-tflops")


def throughput(text: str):
    """(tokens/s of each log interval after the first, peak MiB of the first TSP group's ranks).
    The first interval is dropped: it times nothing (its clock starts at the first micro-batch)
    or the warm-up."""
    rates, peaks = [], []
    for rate, memory in _THROUGHPUT.findall(text):
        rates.append(float(rate))
        peaks.extend(float(m) for m in memory.replace(" ", "").split(",") if m)
    return rates[1:], (max(peaks) if peaks else None)


def planner_prediction_bytes(cfg, seq_length: int, micro_batch_size: int = 1, tsp_size: int = 1,
                             distributed_optimizer: bool = False) -> int:
    """The planner's peak bytes per rank (bf16) for this run (full recompute, as
    scripts/gpu_check.sh runs it)."""
    from megatron_tsp.planner.transfers import Layout
    from megatron_tsp.planner.memory import memory_bytes
    return memory_bytes(Layout("tsp", tp=tsp_size, recompute="full"), cfg, seq_length,
                        micro_batch_size, 2,
                        distributed_optimizer=distributed_optimizer).total


def cmd_throughput(args) -> int:
    text = Path(args.log).read_text(errors="replace")
    cfg = model_config(args.model_size, args.num_layers)
    rates, peak_mib = throughput(text)
    predicted = planner_prediction_bytes(cfg, args.seq_length, args.micro_batch_size)
    print(f"planner prediction (tsp 1, bf16, flash): {predicted / 2**30:.2f} GiB per rank")
    if not rates:
        result("FAIL", f"no timed 'tokens/s' interval in the log: {_error_line(text)}")
        print(f"RESULT-MEMORY FAIL predicted {predicted / 2**30:.2f} GiB, nothing measured")
        return 1
    rate = statistics.median(rates)
    per_token = flops_per_token(cfg, args.seq_length)
    per_token_hw = flops_per_token(cfg, args.seq_length, recompute=True)
    device = args.device_name
    if device is None:
        import torch
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown"
    peak = peak_flops(device, args.peak_tflops)
    mfu, hfu = rate * per_token / peak, rate * per_token_hw / peak
    print(f"tokens/s per interval (first dropped): {', '.join(f'{r:.0f}' for r in rates)}")
    print(f"model FLOPs per token: {per_token / 1e9:.3f} GFLOP (with TSP's recompute "
          f"{per_token_hw / 1e9:.3f}); peak {peak / 1e12:.0f} TFLOP/s bf16 ({device})")
    ms = [float(m) for m in _ITERATION_MS.findall(text)][1:]
    if ms:
        tokens = args.seq_length * args.micro_batch_size * args.global_batch_size
        print(f"Megatron's iteration time: median {statistics.median(ms):.0f} ms -> "
              f"{tokens / statistics.median(ms) * 1e3:.0f} tokens/s")
    ratio = peak_mib * 2**20 / predicted
    print(f"peak memory: measured {peak_mib / 1024:.2f} GiB (max allocated), planner "
          f"{predicted / 2**30:.2f} GiB, measured/planner {ratio:.2f}")
    result("INFO", f"{rate:.0f} tokens/s (median of {len(rates)}), MFU {100 * mfu:.1f}% "
                   f"(with recompute {100 * hfu:.1f}%)")
    # PASS within MEMORY_TOLERANCE of the planner, else WARN (a finding, not a failed run)
    close = abs(ratio - 1) <= MEMORY_TOLERANCE
    print(f"RESULT-MEMORY {'PASS' if close else 'WARN'} measured {peak_mib / 1024:.2f} GiB, "
          f"planner {predicted / 2**30:.2f} GiB, measured/planner {ratio:.2f}", flush=True)
    return 0


# --- (c) SDPA flash dispatch for the lower-right causal zigzag chunks -----------------------

def sdpa_cases(seq_length: int, tsp_sizes=(1, 8)):
    """(D, chunk index k, q rows c, kv length (k+1) c) of TSP's zigzag chunks: rank p holds
    chunks p and 2D-1-p of length c = S / 2D and attends to the keys up to each chunk's end."""
    from megatron_tsp.size_rules import sequence_problem
    cases = []
    for D in tsp_sizes:
        if sequence_problem(seq_length, D):
            continue
        c = seq_length // (2 * D)
        for k in sorted({0, 1, D - 1, D, 2 * D - 1}):
            cases.append((D, k, c, (k + 1) * c))
    return cases


def flash_dispatches(c: int, kv_len: int, heads: int, kv_heads: int, head_dim: int,
                     batch: int = 1):
    """(ok, error) of forward and backward of the TSP call (q [b, hs, c, hd] permuted from
    [c, b, hs, hd], k/v sliced from [b, gs, S, hd], causal_lower_right, enable_gqa) with only
    the flash kernel allowed: SDPA raises when flash cannot take the call."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(c, batch, heads, head_dim, device=dev, dtype=dt).permute(1, 2, 0, 3)
    kv = torch.randn(2, kv_len, batch, kv_heads, head_dim, device=dev, dtype=dt)
    kv = kv.permute(0, 2, 3, 1, 4)
    q.requires_grad_(True)
    kv.requires_grad_(True)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, kv[0, :, :, :kv_len], kv[1, :, :, :kv_len],
                                                 attn_mask=causal_lower_right(c, kv_len),
                                                 enable_gqa=True)
            out.float().sum().backward()
        torch.cuda.synchronize()
        if not (torch.isfinite(out).all() and torch.isfinite(q.grad).all()):
            return False, "non-finite output or gradient"
        return True, ""
    except RuntimeError as error:
        return False, str(error).strip().splitlines()[0][:160]


def cmd_sdpa(args) -> int:
    import torch
    if not torch.cuda.is_available():
        result("FAIL", "no CUDA device: the flash check needs one")
        return 2
    cfg = model_config(args.model_size)
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; heads {heads}, kv heads "
          f"{kv_heads}, head dim {hd}, bf16, forward + backward under "
          f"sdpa_kernel(FLASH_ATTENTION)")
    print("| D | chunk k | q rows c | kv (k+1)c | q / kv heads of a step | flash |")
    print("|---|---|---|---|---|---|")
    failed = []
    for D, k, c, kv_len in sdpa_cases(args.seq_length):
        step_kv = max(kv_heads // D, 1)  # one head-group step: G/D groups, or one when G < D
        step_q = step_kv * (heads // kv_heads)
        ok, error = flash_dispatches(c, kv_len, step_q, step_kv, hd)
        print(f"| {D} | {k} | {c} | {kv_len} | {step_q} / {step_kv} | "
              f"{'yes' if ok else 'NO: ' + error} |", flush=True)
        if not ok:
            failed.append(f"D={D} k={k}")
        torch.cuda.empty_cache()
    if failed:
        result("FAIL", f"flash refused {len(failed)} chunk shape(s): {', '.join(failed)}")
        return 1
    result("PASS", f"flash takes every lower-right causal chunk (S={args.seq_length}, D=1 and 8)")
    return 0


# --- (e) packed documents: torch's varlen flash kernel against the CPU path ------------------

# documents of the varlen check: one-token ones, some cut by the chunk boundaries of D = 2; and
# a sequence of one-token documents only (every segment of one query: flash's forward then
# takes its GQA-swapped path)
VARLEN_LENGTHS = (1, 700, 1, 1, 2500, 37, 1200)


def _varlen_errors(tokens, heads: int, kv_heads: int, hd: int, generator):
    """The largest relative error (above a floor of 1e-2 per element) of the GPU's packed
    attention (bf16) against the CPU path (fp32), values and gradients, over every chunk of
    D = 2."""
    import torch

    from megatron_tsp.documents import packed_documents
    from megatron_tsp.layers.attention import zigzag_causal_attention
    from megatron_tsp.layout import local_chunks
    S, D, worst = tokens.shape[1], 2, 0.0
    for rank in range(D):
        chunks = local_chunks(rank, D)
        q = torch.randn(S // D, 1, heads, hd, generator=generator)
        kv = torch.randn(S, 2, 1, kv_heads, hd, generator=generator)
        grad = torch.randn(S // D, 1, heads * hd, generator=generator)
        results = []
        for device, dtype in (("cuda", torch.bfloat16), ("cpu", torch.float32)):
            documents = packed_documents(tokens, 0, chunks, 2 * D, torch.device(device))
            inputs = [t.to(device, dtype).requires_grad_() for t in (q, kv)]
            out = zigzag_causal_attention(*inputs, documents=documents)
            results.append([out, *torch.autograd.grad(out, inputs, grad.to(device, dtype))])
        for name, got, expected in zip(("out", "dq", "dkv"), *results):
            got, expected = got.float().cpu(), expected.float()
            # a one-token document's query has no gradient (its softmax is 1): the floor keeps
            # bf16's rounding of zero from reading as a relative error
            floor = 1e-2 * expected.numel() ** 0.5
            error = ((got - expected).norm() / (expected.norm() + floor)).item()
            print(f"S={S} rank {rank} {name}: relative error {error:.2e}", flush=True)
            worst = max(worst, error if math.isfinite(error) else math.inf)
    return worst


def cmd_varlen(args) -> int:
    """TSP's packed-document attention of every chunk of D = 2 on the GPU (varlen flash, bf16)
    equals the CPU path (the chunk kernels per segment, fp32) on the same inputs: values and
    gradients, relative error at most 2e-2 (bf16)."""
    import numpy
    import torch
    if not torch.cuda.is_available():
        result("FAIL", "no CUDA device: the varlen check needs one")
        return 2
    generator = torch.Generator().manual_seed(0)
    mixed = numpy.ones((1, args.seq_length), dtype=numpy.int64)
    mixed[0, numpy.cumsum(VARLEN_LENGTHS) - 1] = 0
    one_token = numpy.zeros((1, 256), dtype=numpy.int64)
    worst = max(_varlen_errors(tokens, 8, 2, 128, generator) for tokens in (mixed, one_token))
    status = "PASS" if worst <= 2e-2 else "FAIL"
    result(status, f"varlen flash equals the CPU path to {worst:.1e} (S={args.seq_length}, "
                   f"{len(VARLEN_LENGTHS) + 1} documents; S=256 of one-token documents; D=2)")
    return 0 if status == "PASS" else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("losses", help="(a) every logged lm loss is finite")
    p.add_argument("log")
    p.add_argument("--expect", type=int, default=0, help="iterations the log must hold")
    p.set_defaults(fn=cmd_losses)
    p = sub.add_parser("throughput", help="(b) tokens/s and MFU, (d) memory vs planner")
    p.add_argument("log")
    p.add_argument("--model-size", default="1.7b")
    p.add_argument("--num-layers", type=int)
    p.add_argument("--seq-length", type=int, required=True)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak (default: by GPU name)")
    p.add_argument("--device-name", help="GPU name (default: torch's, if it sees one)")
    p.set_defaults(fn=cmd_throughput)
    p = sub.add_parser("sdpa", help="(c) flash kernel for TSP's lower-right causal chunks")
    p.add_argument("--seq-length", type=int, default=32768)
    p.add_argument("--model-size", default="1.7b")
    p.set_defaults(fn=cmd_sdpa)
    p = sub.add_parser("varlen", help="(e) packed documents: varlen flash against the CPU path")
    p.add_argument("--seq-length", type=int, default=8192)
    p.set_defaults(fn=cmd_varlen)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
