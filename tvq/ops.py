"""One ``torch.autograd.Function`` per differentiable op, over the Taichi kernels in ``tvq.kernels``.

Every Function hands the kernels detached, contiguous tensors (a tensor with ``requires_grad`` would make
Taichi allocate a gradient buffer on every call) and calls the op's hand-written backward kernel.
The pure-torch twin of each op is in ``tvq.reference``.
"""

from __future__ import annotations

import torch

from . import runtime


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous view of ``t`` for passing to a Taichi kernel."""
    return t.detach().contiguous()


# --- gather + codebook (tvq/kernels/gather.py, tvq/kernels/codebook.py) ---

# --- composite (tvq/kernels/composite.py) ---
