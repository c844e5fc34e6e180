"""Pure-torch twins of every tvq op, written to be read.

Each twin computes what its Taichi kernel computes, in plain torch, so autograd gives the reference
gradients the hand-written backward kernels are tested against. Where it helps a reader the twin keeps the
kernel's loop structure; speed is not a goal here (the vectorised baselines for benchmarks live in
``benchmarks/``).
"""

from __future__ import annotations

import torch

# --- octree (tvq/kernels/octree_build.py, tvq/octree.py) ---

# --- carving (tvq/kernels/carve.py) ---

# --- ray marching (tvq/kernels/raymarch.py) ---

# --- gather + codebook (tvq/kernels/gather.py, tvq/kernels/codebook.py) ---

# --- composite (tvq/kernels/composite.py) ---

# --- importance (tvq/kernels/importance.py) ---
