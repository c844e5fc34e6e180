"""Adam that leaves the rows no sample touched alone (a recipe lever for the grid's parameters).

Plain Adam keeps moving a vertex's features (or a VQ vertex's index logits) on its old momentum in every
step that no ray reaches it, and decays its moments as if it had seen a zero gradient. ``LazyRowAdam``
updates, in the parameter groups marked ``lazy``, only the rows (first dimension) with a non-zero gradient
this step:

    m_r := b1 m_r + (1 - b1) g_r,  v_r := b2 v_r + (1 - b2) g_r^2,  p_r -= lr (m_r / (1 - b1^t)) / (sqrt(v_r / (1 - b2^t)) + eps)

for touched rows r, with the optimiser's global step t (as TensorFlow's LazyAdam); untouched rows keep
their values and moments. Other groups are plain (fused on CUDA) Adam. The state has Adam's keys, so
checkpoints and the pruning's re-indexing of moments work unchanged. Masked dense updates: no host sync.
"""

from __future__ import annotations

import torch


class LazyRowAdam(torch.optim.Adam):
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        lazy = [g for g in groups if g.get("lazy")]
        self.param_groups = [g for g in groups if not g.get("lazy")]
        try:
            if self.param_groups:
                super().step()
        finally:
            self.param_groups = groups
        for group in lazy:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                touched = (g != 0).reshape(g.shape[0], -1).any(dim=1).reshape(-1, *([1] * (g.dim() - 1)))
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.copy_(torch.where(touched, m * b1 + g * (1 - b1), m))
                v.copy_(torch.where(touched, v * b2 + g * g * (1 - b2), v))
                step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + group["eps"]) * group["lr"]
                p.sub_(torch.where(touched, step, torch.zeros_like(step)))
        return loss
