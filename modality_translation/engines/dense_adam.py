"""Adam whose fused CPU step runs on dense views of channels-last parameters.

PyTorch's fused CPU Adam kernel walks each tensor as one flat array and first makes every argument
contiguous in the default layout: for a network kept channels-last (the fast path of
``GANTrainer(channels_last=True)``) that is a copy of each 4D/5D parameter, its gradient and both
moment estimates into the default layout and back, on every step. For the two U-Net-256 generators
(109 M parameters) on one CPU thread that more than doubled the step in a profile. The update is
element-wise, so it may run on any view that lists the same elements in memory order: here, for
the step only, each channels-last parameter, its gradient and its state are replaced by their permuted views (``(N, H, W, C)`` order), which are contiguous; afterwards the
parameters, gradients and state are views of the same memory again in their own shape and layout.
Nothing is copied, and the state dict keeps its shapes: checkpoints are those of ``torch.optim.Adam``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Memory format -> (permutation to the dense view, permutation back), by number of dimensions.
_PERMUTATIONS = {
    4: (torch.channels_last, (0, 2, 3, 1), (0, 3, 1, 2)),
    5: (torch.channels_last_3d, (0, 2, 3, 4, 1), (0, 4, 1, 2, 3)),
}


def _channels_last_permutation(tensor: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The permutations to and from the dense view of a channels-last ``tensor``, or ``None`` for other layouts."""
    entry = _PERMUTATIONS.get(tensor.ndim)
    if entry is None or tensor.is_contiguous():
        return None
    memory_format, forward, backward = entry
    return (forward, backward) if tensor.is_contiguous(memory_format=memory_format) else None


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` that runs its fused step on CPU without layout copies (same update, same state dict).

    Takes the arguments of ``torch.optim.Adam``. Parameters in the default layout, non-fused
    optimisers and parameters whose gradient or state is in another layout than the parameter are
    stepped exactly as by the parent.
    """

    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        """One optimisation step (the closure, if any, runs first with the parameters in their own layout)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.defaults.get("fused"):
            super().step()
            return loss
        swapped = self._dense_views()
        try:
            super().step()
        finally:
            self._restore(swapped)
        return loss

    def _dense_views(self) -> list[tuple[torch.nn.Parameter, tuple[int, ...]]]:
        """Replace each channels-last CPU parameter, its gradient and its state by their dense views."""
        swapped = []
        for group in self.param_groups:
            for parameter in group["params"]:
                grad = parameter.grad
                permutation = None if grad is None or parameter.device.type != "cpu" else _channels_last_permutation(parameter)
                if permutation is None or grad.stride() != parameter.stride():
                    continue
                state = self.state.get(parameter, {})
                moments = [key for key, value in state.items() if torch.is_tensor(value) and value.ndim == parameter.ndim]
                if any(state[key].shape != parameter.shape or state[key].stride() != parameter.stride() for key in moments):
                    continue
                forward, backward = permutation
                parameter.data = parameter.data.permute(forward)
                parameter.grad = grad.permute(forward)
                for key in moments:
                    state[key] = state[key].permute(forward)
                swapped.append((parameter, backward))
        return swapped

    def _restore(self, swapped: list[tuple[torch.nn.Parameter, tuple[int, ...]]]) -> None:
        """Give the parameters, gradients and state their own shape again (views of the same memory)."""
        for parameter, backward in swapped:
            parameter.data = parameter.data.permute(backward)
            if parameter.grad is not None:
                parameter.grad = parameter.grad.permute(backward)
            # Every moment is now in the dense view's order: those swapped in, and those the first
            # step created from the parameter's dense view.
            state = self.state.get(parameter, {})
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.ndim == parameter.ndim:
                    state[key] = value.permute(backward)
