"""Run the entry points for real: pretrain_qwen3.py under torchrun (reading Megatron's iteration
log), plain Megatron's loop on GPTModel (tests/mcore_pretrain_gpt.py) and
tools/convert_checkpoint.py."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_tsp.spawn import free_port

ROOT = Path(__file__).resolve().parents[1]
_ITERATION = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?lm loss: ([0-9.Ee+-]+)")
# Megatron 0.19.2 prints the gradient norm (before clipping) with 3 decimals: "grad norm: 0.489"
_GRAD_NORM = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*?grad norm: ([0-9.Ee+-]+|nan|inf)")

# tiny Qwen3 on deterministic mock data: the same tokens at every --tsp-size
MOCK_RUN = ["--mock-data", "--model-size", "tiny", "--seq-length", "64", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--lr", "1e-3", "--log-interval", "1", "--eval-iters", "0",
            "--seed", "1234"]


def run_pretrain(nproc: int, args, cache_dir, timeout: float = 300, env=None):
    """(returncode, {iteration: lm loss}, combined output) of one torchrun job."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), str(ROOT / "pretrain_qwen3.py"),
               *map(str, args)]
    environment = dict(os.environ, MEGATRON_TSP_CACHE=str(cache_dir), OMP_NUM_THREADS="1",
                       **(env or {}))
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    return result.returncode, lm_losses(output), output


def lm_losses(output: str):
    """{iteration: logged lm loss} of a run's output."""
    return {int(i): float(loss) for i, loss in _ITERATION.findall(output)}


def losses_of(nproc: int, args, cache_dir, **kwargs):
    code, losses, output = run_pretrain(nproc, args, cache_dir, **kwargs)
    assert code == 0, output[-5000:]
    assert losses, output[-5000:]
    return losses


def grad_norms(output: str):
    """{iteration: logged grad norm} of a run's output (iterations whose line has one)."""
    return {int(i): float(norm) for i, norm in _GRAD_NORM.findall(output)}


def losses_and_grad_norms_of(nproc: int, args, cache_dir, **kwargs):
    """losses_of, plus {iteration: grad norm}: one norm for every logged loss."""
    code, losses, output = run_pretrain(nproc, args, cache_dir, **kwargs)
    assert code == 0, output[-5000:]
    assert losses, output[-5000:]
    norms = grad_norms(output)
    assert norms.keys() == losses.keys(), output[-5000:]
    return losses, norms


def run_mcore_driver(args, nproc: int = 2, timeout: float = 300.0) -> str:
    """tests/mcore_pretrain_gpt.py (plain GPTModel in Megatron's loop) under torchrun: its
    combined output; the test fails on an error or after `timeout` seconds."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               str(ROOT / "tests" / "mcore_pretrain_gpt.py"), *map(str, args)]
    env = dict(os.environ, CUDA_DEVICE_MAX_CONNECTIONS="1", OMP_NUM_THREADS="1")
    # own session, so that a run past its time is stopped with all its ranks
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(command)}\ntimed out after {timeout} s\n...\n{output[-6000:]}")
    assert proc.returncode == 0, f"{' '.join(command)}\n...\n{output[-6000:]}"
    return output


def _weights_of(checkpoints):
    from megatron_tsp.conversion.convert import load_model
    return [{name: p.detach().clone() for name, p in load_model(str(c), 1).named_parameters()}
            for c in checkpoints]


def convert(*argv, check=True, timeout: float = 300):
    """tools/convert_checkpoint.py run for real; with check, it must succeed."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"),
                             *map(str, argv)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def checkpoint_weights(*checkpoints):
    """{parameter name: tensor} of each checkpoint, loaded at tsp 1 in one spawned process."""
    from tests.dist import run_distributed
    return run_distributed(_weights_of, 1, checkpoints)[0]


def checkpoint_view(save_dir, iteration: int, view):
    """A new directory `view` whose tracker names iteration `iteration` of save_dir (linked, not
    copied): to load, or resume from, a checkpoint that is not the latest."""
    view.mkdir()
    name = f"iter_{iteration:07d}"
    (view / name).symlink_to(save_dir / name)
    (view / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return view


def script_module(relative_path: str):
    """A script of the project (e.g. tools/convert_checkpoint.py) imported as a module, to call
    its functions in the test process."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
