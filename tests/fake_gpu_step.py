"""One rank of a TSP training run on fake CUDA tensors: prints a JSON report of what it saw.

    python tests/fake_gpu_step.py --rank 0 --tsp-size 8 --model-size 8b --num-layers 2 \\
        --seq-length 131072 --dtype bf16

With `--generate N`, the rank runs generation instead (megatron_tsp.inference): the prefill of a
--seq-length-token prompt and N - 1 decode steps, each step's token fed back as a device tensor.
`generate()` itself reads each token on the host to decide whether to stop, its one documented
synchronisation per token; everything else must stay on the device.

Runs as a script (not under pytest) because the fake CUDA shim must be loaded before torch is
imported (see tests/fake_gpu.py). Each iteration is what Megatron's training step does with
the TSP model: the rank's zigzag shard of a batch, forward, the loss over the TSP group,
backward, the replicated parameters' gradients summed over the group, and the mixed-precision
optimizer step. Megatron's DDP and optimizer keep their buffers on the CPU when torch has no
CUDA (megatron_tsp.compat), so their state is reproduced here as they hold it on a GPU: an fp32
main_grad per parameter that each gradient is added into as autograd produces it (then freed),
fp32 master parameters and Adam's two fp32 moments.
"""

import argparse
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_fake_cuda() -> None:
    """Build (once per torch version) and load tests/fake_cuda.cpp; must precede `import torch`."""
    torch_dir = Path(importlib.util.find_spec("torch").submodule_search_locations[0])
    cache = Path(os.environ.get("MEGATRON_TSP_CACHE", Path.home() / ".cache" / "megatron_tsp"))
    library = cache / f"fake_cuda-torch{importlib.metadata.version('torch')}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.partial")
        subprocess.run(["g++", "-O1", "-w", "-shared", "-fPIC", "-std=c++17",
                        "-D_GLIBCXX_USE_CXX11_ABI=1", f"-I{torch_dir / 'include'}",
                        str(ROOT / "tests" / "fake_cuda.cpp"), f"-L{torch_dir / 'lib'}",
                        "-lc10", "-ltorch_cpu", "-o", str(partial)], check=True)
        os.replace(partial, library)
    for name in ("libc10.so", "libtorch_cpu.so"):
        ctypes.CDLL(str(torch_dir / "lib" / name), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(library)).register_fake_cuda()


class MixedPrecisionState:
    """Megatron's DDP gradient buffers and mixed-precision Adam, as they sit in GPU memory."""

    def __init__(self, model, wrong_grads: list):
        import torch
        self.params = list(model.parameters())
        for p in self.params:
            p.main_grad = torch.zeros_like(p, dtype=torch.float32)
            if not getattr(p, "sequence_parallel", False):  # summed over the group first
                p.register_post_accumulate_grad_hook(self._into_main_grad)
        self.wrong_grads = wrong_grads
        self.masters = [p.detach().float() for p in self.params]
        self.optimizer = torch.optim.Adam(self.masters, lr=1e-4, foreach=False)

    def _into_main_grad(self, p) -> None:
        if p.grad.dtype != p.dtype or p.grad.device != p.device:
            self.wrong_grads.append(f"{tuple(p.shape)}: {p.grad.dtype} on {p.grad.device}")
        p.main_grad.add_(p.grad)
        p.grad = None

    def step(self) -> None:
        import torch
        with torch.no_grad():
            for p, master in zip(self.params, self.masters):
                if p.grad is not None:
                    self._into_main_grad(p)
                master.grad = p.main_grad
            self.optimizer.step()
            for p, master in zip(self.params, self.masters):
                p.copy_(master)
                p.main_grad.zero_()


def fake_rank(args):
    """This process as rank --rank of the fake group, on fake "cuda" -> (device, dtype, the
    Qwen3 config)."""
    import torch

    from megatron_tsp.config import qwen3_preset
    from megatron_tsp.device import set_compute_device
    from tests.fake_gpu import start_fake_rank, use_gpu_attention_kernels

    start_fake_rank(args.rank, args.tsp_size, args.tsp_size)
    if args.gpu_attention:
        use_gpu_attention_kernels()
    device = torch.device("cuda", 0)
    set_compute_device(device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cfg = qwen3_preset(args.model_size).replace(num_layers=args.num_layers)
    if args.yarn:  # the 128K recipe's: a released Qwen3's 32K extended 4x
        from megatron_tsp.config import YarnScaling
        cfg = cfg.replace(yarn=YarnScaling(4.0, 32768), max_position_embeddings=args.seq_length)
    return device, dtype, cfg


def run(args) -> dict:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from megatron_tsp import comm
    from megatron_tsp import parallel_state as ps
    from megatron_tsp.layers.vocab import masked_token_mean
    from megatron_tsp.layout import local_token_index, scatter_to_local
    from megatron_tsp.models.qwen3 import build_tsp_qwen3
    from tests.fake_gpu import StepAudit, peak_bytes

    D, S, b = args.tsp_size, args.seq_length, args.micro_batch_size
    device, dtype, cfg = fake_rank(args)
    wrong_grads, loss_seen = [], ""
    with FakeTensorMode():
        with torch.device(device):
            model = build_tsp_qwen3(cfg, args.recompute, dtype)
        tracker = MemTracker()
        tracker.track_external(model)
        audit = StepAudit(device, chunk=S // (2 * D))
        documents = _packed_documents(S, b, D, device) if args.packed else None
        with tracker:
            state = MixedPrecisionState(model, wrong_grads)
            for _ in range(args.iterations):
                tracker.reset_mod_stats()  # per-module figures only; the peak stays
                with audit:
                    tokens = torch.randint(0, cfg.vocab_size, (b, S + 1), device=device)
                    ids, labels = (scatter_to_local(t, dim=1) for t in (tokens[:, :-1],
                                                                         tokens[:, 1:]))
                    positions = local_token_index(S, ps.get_tsp_rank(), D, device=device)
                    loss = model(ids, positions.expand(b, -1), labels=labels,
                                 documents=documents)
                    to_backprop, mean = masked_token_mean(loss, torch.ones_like(loss))
                    to_backprop.backward()
                    comm.all_reduce_replicated_grads(model)
                    loss_seen = f"{tuple(mean.shape)} {mean.dtype} {mean.device}"
                state.step()
        peak = peak_bytes(tracker, device)
    return {"rank": args.rank, "peak_bytes": peak, "loss": loss_seen,
            "wrong_grads": wrong_grads[:5], **audit.report()}


# packed documents of mixed lengths, from one token to 64K, then one with no EOD to the end
PACKED_LENGTHS = (1, 65536, 1, 17, 3000, 1, 16384, 250, 1, 8192)


def _packed_documents(S: int, b: int, D: int, device):
    """The document offsets of b samples of PACKED_LENGTHS, as the data path makes them: from
    host tokens, before the step (its audit watches the step, not the data loader)."""
    import numpy

    from megatron_tsp import parallel_state as ps
    from megatron_tsp.documents import packed_documents
    from megatron_tsp.layout import local_chunks

    eod = 0
    tokens = numpy.ones((b, S), dtype=numpy.int64)  # host tokens, whatever mode makes tensors
    tokens[:, numpy.cumsum(PACKED_LENGTHS) - 1] = eod
    return packed_documents(tokens, eod, local_chunks(ps.get_tsp_rank(), D), 2 * D, device)


def generation(args) -> dict:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from megatron_tsp import parallel_state as ps
    from megatron_tsp.inference.decode import decode_step, logits
    from megatron_tsp.inference.kv_cache import KVCache
    from megatron_tsp.inference.prefill import prefill
    from megatron_tsp.layout import BLOCK, padded_length
    from megatron_tsp.models.qwen3 import build_tsp_qwen3
    from tests.fake_gpu import StepAudit

    D, n, new_tokens = args.tsp_size, args.seq_length, args.generate
    device, dtype, cfg = fake_rank(args)
    with FakeTensorMode():
        with torch.device(device):
            model = build_tsp_qwen3(cfg, "none", dtype)
        cache = KVCache(cfg, 1, n, new_tokens - 1, BLOCK, ps.get_tsp_rank(), D,
                        model.output_weight())
        audit = StepAudit(device, chunk=padded_length(n, D) // (2 * D))
        with audit:
            prompt = torch.randint(0, cfg.vocab_size, (1, n), device=device)
            step_logits = logits(model, prefill(model, prompt, cache))
            for i in range(new_tokens - 1):
                step_logits = decode_step(model, step_logits.argmax(-1), n + i, cache)
        logits_seen = f"{tuple(step_logits.shape)} {step_logits.dtype} {step_logits.device}"
    return {"rank": args.rank, "cache": f"{cache.kv.dtype} {cache.kv.device}",
            "cache_bytes": cache.nbytes, "cached_tokens": cache.length, "logits": logits_seen,
            **audit.report()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--tsp-size", type=int, required=True)
    parser.add_argument("--model-size", default="8b")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=131072)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--recompute", default="full",
                        help="what backward recomputes: a mode of layers/recompute.py (none, "
                             "activations, selective, full); full by default, the mode a "
                             "128K-token step needs")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--packed", action="store_true",
                        help="documents of mixed lengths packed in each sample (PACKED_LENGTHS)")
    parser.add_argument("--yarn", action="store_true",
                        help="YaRN rotary scaling, factor 4 over 32,768 positions")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="instead of training: prefill a --seq-length-token prompt, then "
                             "decode until N tokens are generated")
    parser.add_argument("--no-gpu-attention", dest="gpu_attention", action="store_false",
                        help="leave SDPA's kernel choice alone (the CPU build's math path)")
    args = parser.parse_args(argv)
    load_fake_cuda()
    sys.path.insert(0, str(ROOT))  # the package and tests/ as this checkout has them
    print(json.dumps(generation(args) if args.generate else run(args)), flush=True)
    os._exit(0)  # the fake process group's threads abort an orderly interpreter exit


if __name__ == "__main__":
    main()
