"""Fix megatron-core 0.19.2's distributed-optimizer checkpoint resume with torch's own Adam.

Without apex or Transformer Engine, megatron/core/optimizer/distrib_optimizer.py wraps
``torch.optim.Adam`` (``HAVE_APEX_OR_TE = False``). torch's Adam keeps a ``step`` tensor per
parameter; the distributed optimizer saves it as one number per param group. Two bugs follow,
on any machine (GPU included) where the fused apex/TE Adam is absent:

1. ``DistributedOptimizer.load_state_dict`` puts ONE step tensor into every parameter's state
   (``s["step"] = step``), and ``torch.optim.Optimizer.load_state_dict`` keeps ``step`` as given
   (it casts no 'step' of a non-fused, non-capturable optimizer). Adam then does
   ``step_t += 1`` once per parameter on that shared tensor: after resume the step count
   advances by the number of parameters per iteration, bias correction is wrong, and the
   resumed losses drift away from an uninterrupted run's (from the 4th digit on, silently).
   Worse, with the default ``torch_dist`` optimizer format (``dp_reshardable``) the per-param
   state tensors copied back by ``_set_main_param_and_optimizer_states`` include ``step``,
   whose checkpoint entry is a ``LocalNonpersistentObject``: the value of the freshly
   allocated template state, not the saved one, so the step restarts from the template's;
   and the fully reshardable format (``--dist-ckpt-optim-fully-reshardable``) leaves ``step``
   out of the per-param tensors while ``_set_main_param_and_optimizer_states`` still looks it
   up for every tensor of torch Adam's state: ``KeyError: 'step'`` at resume.
2. ``DistributedOptimizer.state_dict`` reads the step from the inner optimizer's state and
   asserts there is exactly one value. Before the first step there is no state at all, and
   ``load_checkpoint`` builds the sharded state dict (through ``state_dict``) exactly then: a
   bare ``AssertionError`` at resume.
3. Whatever the Adam: ``load_parameter_state_from_dp_reshardable`` (the default ``torch_dist``
   optimizer format, ``dp_reshardable``) copies the saved main params in place into the
   optimizer's params. In fp32 training those are views of the model's own parameters (leaves
   that require grad), and without ``torch.no_grad()`` torch refuses: "a view of a leaf
   Variable that requires grad is being used in an in-place operation". Its siblings
   (``load_parameter_state_from_fully_reshardable``, ``..._from_fs_model_space``) carry
   ``@torch.no_grad()``; this one gets it too. (bf16/fp16 runs keep separate fp32 main params
   and do not hit it.)

Fixes 1 and 2 keep megatron's own code and correct around it: per-parameter state loading
never touches ``step``; after ``load_state_dict`` each parameter gets its own step tensor
holding the step saved in the param groups (the one value megatron keeps for it); and
``state_dict`` answers step 0 (the truth: no step taken) while the inner optimizer has no
state. Seen on CPU (tiny GPT, DP=2): without them the resumed step restarted at 0 and
advanced by 16 (the parameters of a rank's shard) per iteration; the loss at iteration 5 was
5.356146 instead of 5.362646.
"""

import functools

import torch


def _state_dict_before_first_step(state_dict):
    def wrapped(self):
        if len(self.optimizer.state) > 0:
            return state_dict(self)
        # What state_dict returns, with the step the inner optimizer has not recorded yet.
        inner_state_dict = self.optimizer.state_dict()
        result = {"optimizer": {k: v for k, v in inner_state_dict.items() if k != "state"}}
        for param_group in result["optimizer"]["param_groups"]:
            del param_group["params"]
            param_group["step"] = 0
        if self.grad_scaler:
            result["grad_scaler"] = self.grad_scaler.state_dict()
        return result

    return functools.wraps(state_dict)(wrapped)


def _load_state_dict_with_own_steps(load_state_dict):
    def wrapped(self, state_dict):
        load_state_dict(self, state_dict)
        steps = {group.get("step") for group in state_dict["optimizer"]["param_groups"]}
        if len(steps) != 1 or None in steps:
            return
        step = float(steps.pop())
        for param_state in self.optimizer.state.values():
            if "step" in param_state:
                param_state["step"] = torch.tensor(step, dtype=torch.float32)

    return functools.wraps(load_state_dict)(wrapped)


def _set_states_without_step(set_states):
    def wrapped(self, model_param, tensors):
        # A non-tensor entry is skipped by the copy loop; the step is restored from param groups.
        return set_states(self, model_param, {**tensors, "step": None})

    return functools.wraps(set_states)(wrapped)


@functools.cache
def apply_optimizer_resume_fix() -> None:
    """Patch DistributedOptimizer once: 3 always, 1 and 2 where it wraps torch's Adam."""
    import megatron.core.optimizer.distrib_optimizer as distrib_optimizer

    cls = distrib_optimizer.DistributedOptimizer
    cls.load_parameter_state_from_dp_reshardable = torch.no_grad()(
        cls.load_parameter_state_from_dp_reshardable)
    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    cls.state_dict = _state_dict_before_first_step(cls.state_dict)
    cls._set_main_param_and_optimizer_states = _set_states_without_step(
        cls._set_main_param_and_optimizer_states)
    cls.load_state_dict = _load_state_dict_with_own_steps(cls.load_state_dict)
