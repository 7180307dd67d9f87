"""Simulated int8 activations: what onnxruntime's static int8 execution does to a block.

In the ``onnxruntime-int8`` runtime a block whose weights are at <= 8 bits runs int8 kernels
(:mod:`searchcomp.deploy.int8`): onnxruntime's static QDQ quantization rounds every tensor
such a block computes with to uint8 (or int8, by the study's scheme:
:mod:`searchcomp.deploy.schemes`), at a per-tensor scale and zero point calibrated
(min/max) on training images, and computes with weight codes within the scheme's range. :func:`simulate_int8` makes a block do the same in torch, so the
fine-tune adapts to it and the trial's validation accuracy predicts the artifact's.

Which tensors, as onnxruntime quantizes them (BatchNorm folded into the conv before it, a
ReLU right after a conv or an add absorbed into the uint8 range):

* the block's input (shared by its first conv and the residual path) and its output;
* the input of every weighted layer inside (Conv, Linear, Conv3d, custom layers with
  ``quant_weights``): e.g. the ReLU output between two convs, depthwise -> pointwise;
* the output of every BatchNorm that does not feed a ReLU module (the conv + BN output that
  enters a residual add); one that does is left alone, since quantizing before the ReLU
  would round twice (this is detected on the first calibration pass).

Ranges are plain min/max over calibration images of the float model (every quantizer
passes its input through while observing), exactly as onnxruntime's ``MinMax`` calibrator
computes them, widened to include 0; :func:`calibrate_activations` is run when the block is
built and again after the fine-tune, on the images the exporter calibrates with.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

#: modules whose input is a weighted layer's input (their own submodules are not looked into)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = nn.modules.batchnorm._BatchNorm
INPUT, OUTPUT = "int8_input", "int8_output"
#: the block attribute naming the int8 scheme it simulates
SCHEME_ATTR = "int8_scheme"
QMAX = 255


class ActivationQuant(nn.Module):
    """Fake quantization of one tensor to ``qmin..qmax`` (uint8 0..255 by default, int8
    -128..127 for signed schemes) with a calibrated ``[lo, hi]`` range.

    ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = round(qmin - lo / scale)``, the
    range first widened to include 0 (onnxruntime's asymmetric activations,
    ``compute_scale_zp``). Gradients pass straight through inside the range
    (``torch.fake_quantize_per_tensor_affine``). Until calibrated it is the identity;
    ``active`` turns a quantizer off for good (persistent, like the range).
    """

    def __init__(self, qmin: int = 0, qmax: int = QMAX) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("active", torch.ones((), dtype=torch.bool))
        self.observing = False
        self.qmin, self.qmax = int(qmin), int(qmax)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) of the calibrated range."""
        lo, hi = self.lo.clamp(max=0), self.hi.clamp(min=0)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp_min(torch.finfo(torch.float32).tiny)
        zero = torch.round(self.qmin - lo / scale).clamp(self.qmin, self.qmax).to(torch.int32)
        return scale.float(), zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.lo.copy_(torch.minimum(self.lo, x.min().to(self.lo)))
                self.hi.copy_(torch.maximum(self.hi, x.max().to(self.hi)))
            return x
        if not bool(self.active) or not bool(self.hi > self.lo):
            return x
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale.to(x.device),
                                                     zero.to(x.device), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return (f"[{float(self.lo):.4g}, {float(self.hi):.4g}] -> {self.qmin}..{self.qmax}"
                + ("" if bool(self.active) else ", inactive"))


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module._modules[INPUT](args[0]), *args[1:])


def _quantize_output(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return module._modules[OUTPUT](out)


def _weighted(module: nn.Module) -> bool:
    return isinstance(module, _WEIGHTED) or bool(getattr(module, "quant_weights", ()))


def simulate_int8(block: nn.Module, scheme=None) -> None:
    """Fake-quantize the activations of ``block`` as int8 execution with ``scheme`` (an
    :class:`~searchcomp.deploy.schemes.Int8Scheme` or its name; default ``u8s8``) will (see
    the module docstring), and cap its weight codes at the scheme's range (8-bit weights
    within +-63 under ``reduce_range``); idempotent for the same scheme. The quantizers are
    submodules (``int8_input`` / ``int8_output`` of the block and of each layer concerned),
    so their ranges travel in the state dict; the scheme's name is the block's
    ``int8_scheme`` attribute."""
    from searchcomp.choices.quant import limit_levels
    from searchcomp.config.int8 import get_scheme

    scheme = get_scheme(scheme)
    if is_int8_unit(block):
        if getattr(block, SCHEME_ATTR, None) != scheme.name:
            raise ValueError(f"block already simulates int8 scheme "
                             f"{getattr(block, SCHEME_ATTR, None)}, not {scheme.name}")
        return
    setattr(block, SCHEME_ATTR, scheme.name)
    limit_levels(block, scheme.weight_qmax)
    targets: list[tuple[nn.Module, str]] = [(block, INPUT), (block, OUTPUT)]
    for m in _leaves(block):
        if _weighted(m):
            targets.append((m, INPUT))
        elif isinstance(m, _BATCHNORM):
            targets.append((m, OUTPUT))
    device = next((t.device for t in block.parameters()), torch.device("cpu"))
    for m, role in targets:
        m.add_module(role, ActivationQuant(scheme.act_qmin, scheme.act_qmax).to(device))
        if role == INPUT:
            m.register_forward_pre_hook(_quantize_input)
        else:
            m.register_forward_hook(_quantize_output)


def _leaves(block: nn.Module) -> list[nn.Module]:
    """Weighted layers and BatchNorms under ``block``, not looking inside weighted layers."""
    out: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, (ActivationQuant, parametrize.ParametrizationList)):
                continue
            if _weighted(child) or isinstance(child, _BATCHNORM):
                out.append(child)
            else:
                visit(child)

    visit(block)
    return out


def is_int8_unit(module: nn.Module) -> bool:
    """True for a block that :func:`simulate_int8` prepared (it runs int8 when exported)."""
    return isinstance(module._modules.get(OUTPUT), ActivationQuant) and isinstance(
        module._modules.get(INPUT), ActivationQuant)


def int8_units(model: nn.Module) -> list[str]:
    """Names of the blocks of ``model`` that simulate int8 execution."""
    return [n for n, m in model.named_modules() if is_int8_unit(m)]


def int8_scheme_of(model: nn.Module):
    """The :class:`~searchcomp.deploy.schemes.Int8Scheme` the int8 blocks of ``model``
    simulate (None when none does); several different ones are an error."""
    from searchcomp.config.int8 import get_scheme

    names = {getattr(m, SCHEME_ATTR, None) for _, m in model.named_modules() if is_int8_unit(m)}
    if not names:
        return None
    if len(names) > 1:
        raise ValueError(f"the int8 blocks simulate different schemes: {sorted(map(str, names))}")
    return get_scheme(names.pop())


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuant]:
    """Every activation quantizer of ``model``, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ActivationQuant)}


@torch.no_grad()
def calibrate_activations(model: nn.Module, images: torch.Tensor, batch_size: int = 16) -> int:
    """Set every quantizer's range to the min/max of its tensor over ``images`` on the float
    model (quantizers pass through while observing), in eval mode (every module's mode is
    restored after); returns how many.

    On a quantizer's first calibration, a BatchNorm output found to go unchanged into a ReLU
    module is turned off (onnxruntime quantizes after the ReLU, which the next layer's input
    quantizer does).
    """
    quantizers = activation_quantizers(model)
    if not quantizers:
        return 0
    fresh = {n: q for n, q in quantizers.items()
             if n.endswith(OUTPUT) and not bool(q.hi > q.lo) and bool(q.active)}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for q in quantizers.values():
        q.lo.zero_()
        q.hi.zero_()
        q.observing = True
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size]
            if start == 0 and fresh:
                feeding = _feeding_relu(model, batch, fresh)
            else:
                model(batch)
    finally:
        for q in quantizers.values():
            q.observing = False
        for m, training in modes.items():
            m.training = training
    if fresh:
        for name in feeding:
            fresh[name].active.fill_(False)
    return len(quantizers)


def _feeding_relu(model: nn.Module, batch: torch.Tensor,
                  quantizers: dict[str, ActivationQuant]) -> set[str]:
    """Run ``batch``; names of the BatchNorm output quantizers whose tensor a ReLU module
    receives unchanged (compared by value: an in-place residual add changes it)."""
    outputs: dict[str, torch.Tensor] = {}
    found: set[str] = set()
    hooks = []
    for name in quantizers:
        owner = model.get_submodule(name.rsplit(".", 1)[0] if "." in name else "")
        if isinstance(owner, _BATCHNORM):
            hooks.append(owner.register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out.detach().clone())))

    def check(_m: nn.Module, args: tuple) -> None:
        x = args[0]
        for name, out in outputs.items():
            if out.shape == x.shape and torch.equal(out, x):
                found.add(name)

    hooks += [m.register_forward_pre_hook(check) for m in model.modules()
              if isinstance(m, nn.ReLU)]
    try:
        model(batch)
    finally:
        for h in hooks:
            h.remove()
    return found


def strip_int8_simulation(model: nn.Module) -> nn.Module:
    """Remove every activation quantizer and its hook from ``model`` (in place); returns it."""
    for m in model.modules():
        if is_int8_unit(m) and SCHEME_ATTR in m.__dict__:
            del m.__dict__[SCHEME_ATTR]
        for role, hooks, fn in ((INPUT, m._forward_pre_hooks, _quantize_input),
                                (OUTPUT, m._forward_hooks, _quantize_output)):
            if isinstance(m._modules.get(role), ActivationQuant):
                del m._modules[role]
                for key, hook in list(hooks.items()):
                    if hook is fn:
                        del hooks[key]
    return model


def without_int8_simulation(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the simulation removed (``model`` is untouched)."""
    return strip_int8_simulation(copy.deepcopy(model))
