"""The decoder's two-layer MLP, y = W2 relu(W1 [f; v] + b1) + b2, with a backward that runs in row chunks.

The input is a sample's features f (differentiable) next to its encoded view direction v (a constant).
Autograd's backward of this MLP builds dL/dh and the ReLU's masked copy of it for every sample at once,
plus dL/d[f; v]: with a million samples per step those are the largest allocations of a training step.
Here the forward saves x = [f; v] and h as autograd would, and the backward walks the rows in chunks:

    dW2 += g^T h,   db2 += sum g,   gh = (g W2) * [h > 0],   dW1 += gh^T x,   db1 += sum gh,   df = gh W1_f

so the hidden-sized temporaries exist for ``chunk`` rows at a time (masked in place), and only the
feature columns of the input gradient are formed. ``tests/test_field.py`` checks it against
``nn.Sequential`` on the concatenated input.
"""

from __future__ import annotations

import torch

CHUNK = 1 << 18  # rows per backward chunk: ~0.15 GB of temporaries for 128 hidden units


class _TwoLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, view, w1, b1, w2, b2, chunk):
        x = torch.cat([features, view], dim=1)
        hidden = torch.addmm(b1, x, w1.t()).relu_()
        ctx.save_for_backward(x, hidden, w1, w2)
        ctx.chunk, ctx.num_features = chunk, features.shape[1]
        return torch.addmm(b2, hidden, w2.t())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, hidden, w1, w2 = ctx.saved_tensors
        w1_features = w1[:, :ctx.num_features]
        grad_features = x.new_empty(x.shape[0], ctx.num_features) if ctx.needs_input_grad[0] else None
        grad_w1, grad_w2, grad_b1 = torch.zeros_like(w1), torch.zeros_like(w2), w1.new_zeros(w1.shape[0])
        for s in range(0, x.shape[0], ctx.chunk):
            rows = slice(s, s + ctx.chunk)
            g, h = grad_out[rows], hidden[rows]
            grad_w2.addmm_(g.t(), h)
            grad_hidden = (g @ w2).masked_fill_(h == 0, 0.0)  # h = relu(.) is 0 exactly where the ReLU cut
            grad_w1.addmm_(grad_hidden.t(), x[rows])
            grad_b1 += grad_hidden.sum(0)
            if grad_features is not None:
                torch.mm(grad_hidden, w1_features, out=grad_features[rows])
            del grad_hidden  # before the next chunk's is made
        return grad_features, None, grad_w1, grad_b1, grad_w2, grad_out.sum(0), None


def two_layer_mlp(features: torch.Tensor, view: torch.Tensor, first: torch.nn.Linear, second: torch.nn.Linear,
                  chunk: int = CHUNK) -> torch.Tensor:
    """second(relu(first([features, view]))) for features (S, F) and a constant view part (S, V)."""
    return _TwoLayer.apply(features, view.detach(), first.weight, first.bias, second.weight, second.bias, int(chunk))
