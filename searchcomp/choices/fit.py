"""Measuring and shrinking how far a replacement layer is from the layer it replaces.

Every transform starts its new layer from the old one (a closed form where one exists) and
then, where the closed form is only approximate, runs a short local fit on calibration
inputs of that single layer. Fitting one layer in isolation is cheap (no forward through the
network) and gives the search a much better starting point than a cold init.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

#: seed of the local fit, so the same layer and inputs always give the same replacement
FIT_SEED = 0
#: seed of :func:`default_inputs`, so a transform without calibration data is reproducible
INPUT_SEED = 1234
#: chunk size for evaluation passes, to bound memory on large calibration sets
_EVAL_BATCH = 64
#: steps of a local fit between checks of its full error (and at its last step); the best
#: state checked is kept
CHECK_EVERY = 10


@contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode and restore each one's own train/eval flags afterwards.

    BatchNorm in train mode would both use batch statistics (so the error would not be the
    one seen at inference) and update running statistics (a side effect on the caller).
    """
    saved = [[(m, m.training) for m in mod.modules()] for mod in modules]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for states in saved:
            for m, training in states:
                m.training = training


def relative_error(reference: Tensor, output: Tensor) -> float:
    """||output - reference||_F / ||reference||_F: scale-free, so layers can be compared."""
    num = torch.linalg.vector_norm((output - reference).double())
    den = torch.linalg.vector_norm(reference.double()).clamp_min(1e-12)
    return float(num / den)


def _error_sums(old: nn.Module, new: nn.Module, inputs: Tensor) -> tuple[float, float]:
    """Squared norms of (new - old) and of old over ``inputs``, computed chunk by chunk."""
    diff = ref = 0.0
    for start in range(0, inputs.shape[0], _EVAL_BATCH):
        x = inputs[start:start + _EVAL_BATCH]
        y_old = old(x).double()
        y_new = new(x).double()
        diff += float(((y_new - y_old) ** 2).sum())
        ref += float((y_old ** 2).sum())
    return diff, ref


def layer_error(old: nn.Module, new: nn.Module, inputs: Tensor) -> float:
    """Relative output error of ``new`` against ``old`` as they would behave at inference."""
    with torch.no_grad(), _eval_mode(old, new):
        diff, ref = _error_sums(old, new, inputs)
    return (diff ** 0.5) / max(ref ** 0.5, 1e-12)


@contextmanager
def _flush_denormals() -> Iterator[None]:
    """Subnormal floats flushed to zero on the CPU while a fit runs. Adam's second moments
    and the gradients of a freshly trained base reach subnormal values, and x86 computes on
    them up to ~100x slower: measured here, a trial replacing every block of the tests'
    8x8 ResNet-18 by ``meta:4`` took 30 s to build instead of 1.3 s (values below 1.2e-38
    do not change a fit)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fit_local(new: nn.Module, old: nn.Module, inputs: Tensor, steps: int = 60,
              lr: float = 1e-2, batch: int = 32) -> float:
    """Pull ``new`` towards ``old`` on ``inputs`` with a few Adam steps; return the error.

    Only ``new``'s parameters move; ``old`` is read, never changed. Both run in eval mode so a
    BatchNorm inside ``new`` acts as the fixed affine map it will be at inference (its
    affine parameters are still fitted). The best state checked (every
    :data:`CHECK_EVERY` steps and at the end), starting with the initial one, is kept, so a
    fit can never make the replacement worse than its init. Seeded and
    isolated from the caller's RNG, so results are reproducible.
    """
    params = [p for p in new.parameters() if p.requires_grad]
    n = inputs.shape[0]
    batch = max(1, min(batch, n))
    with _eval_mode(old, new), torch.random.fork_rng(devices=[]), _flush_denormals():
        torch.manual_seed(FIT_SEED)
        with torch.no_grad():
            targets = torch.cat([old(inputs[s:s + _EVAL_BATCH])
                                 for s in range(0, n, _EVAL_BATCH)])
            ref = float((targets.double() ** 2).sum()) ** 0.5
            ref = max(ref, 1e-12)
            scale = max(float(targets.double().pow(2).mean()), 1e-30)

            def current_error() -> float:
                diff = 0.0
                for s in range(0, n, _EVAL_BATCH):
                    y = new(inputs[s:s + _EVAL_BATCH]).double()
                    diff += float(((y - targets[s:s + _EVAL_BATCH].double()) ** 2).sum())
                return diff ** 0.5 / ref

            best_err = current_error()
        if not params or steps <= 0:
            return best_err
        best_state = {k: v.detach().clone() for k, v in new.state_dict().items()}
        opt = torch.optim.Adam(params, lr=lr)
        step = 0
        with torch.enable_grad():
            while step < steps:
                order = torch.randperm(n)
                for s in range(0, n, batch):
                    idx = order[s:s + batch]
                    opt.zero_grad(set_to_none=True)
                    # relative to the targets' scale: Adam ignores the scale, but tiny
                    # gradients squared become subnormal floats (see _flush_denormals)
                    loss = torch.nn.functional.mse_loss(new(inputs[idx]), targets[idx]) / scale
                    loss.backward()
                    opt.step()
                    step += 1
                    # the full error costs a pass over every input: check it now and then
                    if step % CHECK_EVERY == 0 or step >= steps:
                        with torch.no_grad():
                            err = current_error()
                        if err < best_err:
                            best_err = err
                            best_state = {k: v.detach().clone()
                                          for k, v in new.state_dict().items()}
                    if step >= steps:
                        break
        for p in params:
            p.grad = None
        new.load_state_dict(best_state)
    return best_err


def default_inputs(layer: nn.Module, n: int = 8, size: int = 8) -> Tensor:
    """Seeded standard-normal inputs shaped for ``layer``, for when no calibration data exists.

    White inputs make the fit match the weights themselves rather than a data distribution;
    the spatial size is raised if needed so the kernel still fits.
    """
    weight = getattr(layer, "weight", None)
    kwargs = {"dtype": weight.dtype, "device": weight.device} if weight is not None else {}
    gen = torch.Generator().manual_seed(INPUT_SEED)
    if isinstance(layer, nn.Conv2d):
        span = max(d * (k - 1) + 1 for k, d in zip(layer.kernel_size, layer.dilation, strict=True))
        size = max(size, span)
        x = torch.randn(n, layer.in_channels, size, size, generator=gen)
    elif isinstance(layer, nn.Linear):
        x = torch.randn(n, layer.in_features, generator=gen)
    else:
        raise TypeError(f"no default inputs for {type(layer).__name__}; "
                        "expected nn.Conv2d or nn.Linear")
    return x.to(**kwargs)


def rank1_factors(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Best depthwise/pointwise factors of a dense kernel, one rank-1 SVD per input channel.

    A separable conv computes W[d, c] = PW[d, c] * DW[c], i.e. each input channel's slice
    W[:, c] (D x k*k) is restricted to rank 1; the truncated SVD is the Frobenius-optimal such
    slice (Eckart-Young). sqrt(s1) goes to both factors so neither is badly scaled.
    Returns ``(dw [C, 1, kh, kw], pw [D, C, 1, 1])``.
    """
    d, c, kh, kw = weight.shape
    mats = weight.detach().permute(1, 0, 2, 3).reshape(c, d, kh * kw).double()
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    root = s[:, 0].sqrt()                                   # [C]
    pw = (u[:, :, 0] * root[:, None]).T                     # [D, C]
    dw = vh[:, 0, :] * root[:, None]                        # [C, k*k]
    return (dw.reshape(c, 1, kh, kw).to(weight.dtype),
            pw.reshape(d, c, 1, 1).to(weight.dtype).contiguous())


def int_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """``conv``'s padding as two ints (resolving 'valid'/'same'), or None if asymmetric."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        spans = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
        if any(s % 2 for s in spans):
            return None
        return (spans[0] // 2, spans[1] // 2)
    return tuple(conv.padding)
