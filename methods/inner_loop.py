"""The inner loop of the MAML family, in one place: MAML adapts with it, and HyperMAML's
warm-up mixes its steps with the hypernetwork's update."""
from __future__ import annotations

from typing import Callable

import torch

Params = dict[str, torch.Tensor]


def gradient_steps(loss_of: Callable[[Params], torch.Tensor], params: Params, names: list[str],
                   steps: int, lr: float | Params, create_graph: bool, grad_weight: float = 1.0,
                   constant: Params | None = None) -> Params:
    """``steps`` times, ``fast[n] -= grad_weight * lr * d loss_of(fast) / d fast[n]``
    (``+ constant[n]`` where ``constant`` has ``n``) for each name ``n`` in ``names``; the other
    entries stay as they are. ``lr`` is one step size, or one per name (Meta-SGD's learned
    rates, each the shape of its parameter). With ``create_graph`` the steps stay
    differentiable (second-order MAML).

    MAML uses the plain gradient step; HyperMAML's warm-up mixes it with the hypernetwork's
    update through ``grad_weight`` and ``constant``. Always returns new dicts.
    """
    for _ in range(steps):
        grads = torch.autograd.grad(loss_of(params), [params[n] for n in names],
                                    create_graph=create_graph)
        params = dict(params)
        for name, grad in zip(names, grads):
            update = grad_weight * (lr[name] if isinstance(lr, dict) else lr) * grad
            if constant is not None and name in constant:
                update = update + constant[name]
            params[name] = params[name] - update
    return params
