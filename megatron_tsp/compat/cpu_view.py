"""The one way megatron modules see the CPU as their CUDA device, without torch itself lying.

A megatron module given `use_cpu_torch` sees a view of ``torch`` whose ``cuda`` answers for the
CPU (current device, RNG state and seeds on the CPU generator, streams and synchronisation that do
nothing) and whose tensor factories read ``device='cuda'`` as the CPU; everything else, and torch
for every other module, is unchanged.
"""

import contextlib
import functools
import importlib
import types
from typing import Union

import torch


class ModuleView(types.ModuleType):
    """A module that answers with ``overrides`` first and the real module for everything else."""

    def __init__(self, real: types.ModuleType, overrides: dict):
        super().__init__(real.__name__, real.__doc__)
        self.__dict__.update(overrides)
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


def _on_cpu(device):
    """Read a CUDA device ('cuda', 'cuda:0', torch.device('cuda'), an index) as the CPU."""
    if device is None:
        return None
    if isinstance(device, int) or torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


def _factory_on_cpu(factory):
    @functools.wraps(factory)
    def create(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return factory(*args, **kwargs)
    return create


def nothing(*args, **kwargs):
    return None


class _NoStream:
    """What megatron does with CUDA streams (wait, record, enter) means nothing on the CPU."""

    __init__ = wait_stream = wait_event = record_event = synchronize = nothing

    def query(self):
        return True


# On CPU the device generator IS the CPU default generator: the one dropout and init draw from.
_CUDA_ON_CPU = {
    "current_device": lambda: torch.device("cpu"),
    "get_rng_state": lambda *args, **kwargs: torch.get_rng_state(),
    "set_rng_state": lambda state, *args, **kwargs: torch.set_rng_state(state),
    "manual_seed": torch.manual_seed,
    "synchronize": nothing,
    "empty_cache": nothing,
    "Stream": _NoStream,
    "current_stream": lambda *args, **kwargs: _NoStream(),
    "stream": lambda stream=None: contextlib.nullcontext(),
}

_FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "empty_like",
              "zeros_like", "ones_like")


def use_cpu_torch(module: Union[str, types.ModuleType], **cuda_overrides) -> None:
    """Give a megatron module (or its name) a torch whose ``cuda`` and factories mean the CPU."""
    if isinstance(module, str):
        module = importlib.import_module(module)
    cuda = ModuleView(torch.cuda, {**_CUDA_ON_CPU, **cuda_overrides})
    factories = {name: _factory_on_cpu(getattr(torch, name)) for name in _FACTORIES}
    module.torch = ModuleView(torch, {"cuda": cuda, **factories})
