"""The model as shipped: quantized weights stored as integers, in torch and ONNX files.

:func:`deploy` turns a candidate (fake-quantized weights, see :mod:`searchcomp.transforms.quant`)
into a module whose quantized weights are buffers of integer codes plus float32 per-channel
scales, dequantized inside ``forward``: int8 at 8 bits, int16 at 16 bits, and for 6, 4 and 2
bits the bit-packed uint8 bytes of :mod:`searchcomp.serialize`, unpacked with exact float
arithmetic (every intermediate is an integer below 2**24). Tracing it therefore writes the
integers, not float copies, into TorchScript and ONNX files; in ONNX the 8-bit weights become
the standard QDQ form (an int8 initializer and a per-channel ``DequantizeLinear``).

The dequantized weight equals the fake-quantized one bit for bit (``q * scale`` in float32
either way), so the files compute what the fine-tuned candidate computed. Neither runtime
unpacks at every call: the TorchScript weights dequantize once, at the first call, and
onnxruntime folds the constant dequantization when the session starts. :func:`rebuild` gives
the float architecture of an export's recipe, to load a compact state dict into.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from searchcomp.blocks import Block
from searchcomp.candidate import Recipe, build
from searchcomp.models import build_model, input_shape
from searchcomp.serialize import encode_codes
from searchcomp.space import ChoiceSet, ModelConfig
from searchcomp.transforms.meta import Meta
from searchcomp.transforms.quant import integer_weights, materialize, quantized_tensors

ONNX_OPSET = 17


class _DequantizeLinear(torch.autograd.Function):
    """int8 codes * per-channel scale; exported to ONNX as ``DequantizeLinear`` (axis 0)."""

    @staticmethod
    def forward(ctx, codes: Tensor, scale: Tensor, view: tuple[int, ...],
                channels: int) -> Tensor:
        return codes.float() * scale.reshape(view)

    @staticmethod
    def symbolic(g, codes, scale, view, channels):
        zero = g.op("Constant", value_t=torch.zeros(channels, dtype=torch.int8))
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=0)


class QWeight(nn.Module):
    """One quantized tensor as integer codes (``codes``) and float32 scales (``scale``);
    calling it returns the float weight ``q * scale`` (scale broadcast over dim 0)."""

    def __init__(self, q: Tensor, scale: Tensor, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.shape = tuple(int(s) for s in q.shape)
        self.numel = int(q.numel())
        self.view = (-1,) + (1,) * (q.dim() - 1) if q.dim() else ()
        self.channels = int(q.shape[0]) if q.dim() else 1
        self.group = 8 // math.gcd(8, self.bits)  # packed values per ``nbytes`` bytes
        self.nbytes = self.group * self.bits // 8
        self.register_buffer("codes", encode_codes(q.detach().cpu(), self.bits))
        self.register_buffer("scale", scale.detach().float().cpu().reshape(-1))

    def integers(self) -> Tensor:
        """The codes as float integers in the weight's shape (unpacked when bit-packed)."""
        b, group, nbytes = self.bits, self.group, self.nbytes
        if b == 8 or b == 16:
            return self.codes.float().reshape(self.shape)
        f = self.codes.float().reshape(-1, nbytes)
        word = f[:, 0]
        for i in range(1, nbytes):
            word = word + f[:, i] * float(256 ** i)
        # a_j = word >> (b * j); value j = a_j - 2**b * a_{j+1}; a_group is 0
        shifted = [word] + [torch.floor(word / float(2 ** (b * j))) for j in range(1, group)]
        vals = [shifted[j] - float(2 ** b) * shifted[j + 1] for j in range(group - 1)]
        vals.append(shifted[-1])
        u = torch.stack(vals, 1).reshape(-1)[:self.numel]
        q = torch.where(u >= float(2 ** (b - 1)), u - float(2 ** b), u)
        return q.reshape(self.shape)

    def dequantized(self) -> Tensor:
        """The float weight ``q * scale``."""
        return self.integers() * self.scale.reshape(self.view)

    def forward(self) -> Tensor:
        if self.bits == 8 and torch.onnx.is_in_onnx_export():
            return _DequantizeLinear.apply(self.codes, self.scale, self.view,
                                           self.channels)
        return self.dequantized()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, shape={self.shape}, stored={self.codes.dtype}"


class CachedQWeight(QWeight):
    """A :class:`QWeight` that dequantizes once, on its first call, and keeps the float
    weight in memory (not in the saved file: :func:`save_torchscript` clears ``cache``).
    Compiled with ``torch.jit.script`` so the traced model keeps this logic."""

    # a real annotation object, not a string (this module uses postponed annotations)
    __annotations__ = {"cache": Optional[Tensor]}  # noqa: UP045 (TorchScript: typing.Optional)

    def __init__(self, q: Tensor, scale: Tensor, bits: int) -> None:
        super().__init__(q, scale, bits)
        self.cache = None

    def forward(self) -> Tensor:
        c = self.cache
        if c is None or c.device != self.codes.device:
            c = self.dequantized()
            self.cache = c
        return c


class ExportableMeta(Meta):
    """:class:`~searchcomp.transforms.meta.Meta` with only non-negative dims in ``movedim``:
    the same ops and values, but torch's TorchScript-based ONNX exporter turns
    ``movedim(-1, d)`` into an invalid Transpose (perm holding -1) that onnxruntime rejects."""

    def forward(self, x: Tensor) -> Tensor:
        dim = self.dim % x.dim()
        g = x.unflatten(dim, (self.n_in, x.shape[dim] // self.n_in))
        last = g.dim() - 1
        y = torch.matmul(g.movedim(dim, last), self.weight)
        return y.movedim(last, dim).flatten(dim, dim + 1)


def _scripted(m: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.script(m)


def _attach(module: nn.Module, names: list[str], qweights: list[QWeight]) -> None:
    """Replace the float tensors ``names`` of ``module`` by integer ones computed on access.

    Like ``torch.nn.utils.parametrize``, ``module`` gets its own subclass with a property
    per name, so the layer's unchanged ``forward`` reads the dequantized weight.
    """
    props = {}
    for n, qw in zip(names, qweights, strict=True):
        delattr(module, n)
        module.add_module(f"{n}_quant", qw)
        props[n] = property(lambda self, key=f"{n}_quant": self._modules[key]())
    cls = type(module)
    module.__class__ = type(f"Int{cls.__name__}", (cls,), props)


def deploy(model: nn.Module, cache: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with every quantized weight held as integers.

    Float tensors stay float32; pruned channels are already gone. ``model`` is untouched.
    With ``cache`` the weights are scripted :class:`CachedQWeight` objects (for TorchScript:
    dequantized once at the first call instead of at every call).
    """
    out = materialize(model).float().cpu().eval()
    by_module: dict[str, list[tuple[str, int]]] = {}
    for mname, n, bits in quantized_tensors(model):
        by_module.setdefault(mname, []).append((n, bits))
    for mname, tensors in by_module.items():
        src = model.get_submodule(mname)
        qws = []
        for n, bits in tensors:
            q, scale = integer_weights(src, n)
            qws.append(_scripted(CachedQWeight(q, scale, bits)) if cache
                       else QWeight(q, scale, bits))
        _attach(out.get_submodule(mname), [n for n, _ in tensors], qws)
    for m in out.modules():
        if type(m) is Meta:
            m.__class__ = ExportableMeta
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def _clear_caches(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule) and hasattr(m, "cache"):
            m.cache = None


def save_torchscript(model: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> None:
    """Trace ``model`` (from :func:`deploy` with ``cache=True``) on ``example`` and
    save it, without the float weights the trace run cached."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice, tracer warnings
        traced = torch.jit.trace(model, (example,), check_trace=False)
        _clear_caches(traced)
        _clear_caches(model)
        torch.jit.save(traced, str(path))
    _strip_debug_info(path)


def _strip_debug_info(path: str | os.PathLike[str]) -> None:
    """Drop the ``*.debug_pkl`` records (source ranges for TorchScript error messages) from a
    saved module: about 1 KiB per layer, which for a small model is several percent of the
    file. ``torch.jit.load`` reads the archive without them."""
    import zipfile

    tmp = Path(f"{path}.tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith(".debug_pkl"):
                zout.writestr(item, zin.read(item.filename), compress_type=item.compress_type)
    os.replace(tmp, path)


def load_torchscript(path: str | os.PathLike[str]) -> nn.Module:
    """A saved TorchScript module, on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def save_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> None:
    """Export ``model`` (from :func:`deploy`) to ONNX with a dynamic batch dimension.

    Constant folding is off: it would fold the dequantization of the integer initializers
    into float ones and undo the compression (onnxruntime folds or fuses at load instead).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), opset_version=ONNX_OPSET, dynamo=False,
                          do_constant_folding=False, input_names=["input"],
                          output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    _compact_onnx(path)


def _compact_onnx(path: str | os.PathLike[str]) -> None:
    """Short node and intermediate value names, no doc strings: the exporter's names
    (``/layer1/layer1.0/conv1/weight_quant/Constant_1_output_0``) cost more than the
    weights of a small model. Initializer and graph input/output names are kept."""
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):
        return  # subgraphs may refer to outer names: leave such a graph as exported
    keep = {i.name for i in g.initializer} | {v.name for v in (*g.input, *g.output)}
    names: dict[str, str] = {}
    for i, n in enumerate(g.node):
        n.name, n.doc_string = f"n{i}", ""
        for o in n.output:
            if o and o not in keep:
                names[o] = f"v{len(names)}"
    for n in g.node:
        for values in (n.input, n.output):
            for j, v in enumerate(values):
                values[j] = names.get(v, v)
    for v in g.value_info:
        v.name = names.get(v.name, v.name)
    g.doc_string = ""
    onnx.save(m, str(path))


def onnx_session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (``threads`` intra-op threads if given)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # fold the DequantizeLinear of constant int8 weights once at load, like every other
    # constant weight computation: only the weights are quantized, so no int8 kernel applies
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime, as an ``nn.Module``: tensors in, tensors out."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])

    def extra_repr(self) -> str:
        return f"{self.path.name}, onnxruntime CPUExecutionProvider"


def rebuild(info: dict[str, Any]) -> nn.Module:
    """The deployed architecture of an export's ``recipe.yaml`` (see :mod:`searchcomp.export`) (fresh weights), in eval mode.

    The base architecture comes from the model config; the recipe is applied to it with a
    random calibration batch: pruning keeps the same channel counts and every replacement the
    same shapes whatever the weights, so the exported state loads strictly afterwards.
    """
    cfg = ModelConfig(**info["model"])
    blocks = [Block(b["name"], tuple(b["convs"]), ChoiceSet()) for b in info["blocks"]]
    with torch.random.fork_rng(), torch.enable_grad(), without_local_fits():
        torch.manual_seed(0)  # (pruning traces the graph with autograd: enable_grad)
        base = build_model(cfg).eval()
        calib = torch.randn(2, *input_shape(cfg))
        built = build(base, Recipe.from_dict(info["recipe"]), blocks, info["head_name"], calib,
                      prune_criterion="l1", prune_round_to=int(info.get("prune_round_to", 1)))
    return materialize(built.model).eval()


@contextmanager
def without_local_fits() -> Iterator[None]:
    """Build with the replacements' local fits turned off, when stored weights will replace
    whatever they would produce anyway: the fits set values, never shapes."""
    from searchcomp import transforms

    touched = [transforms.get(n) for n in transforms.names()
               if getattr(transforms.get(n), "fit_steps", 0)]
    for t in touched:
        t.fit_steps = 0  # an instance attribute over the class default
    try:
        yield
    finally:
        for t in touched:
            del t.fit_steps


def onnx_initializer_dtypes(path: str | os.PathLike[str]) -> dict[str, str]:
    """Name -> ONNX data type name (``INT8``, ``UINT8``, ``FLOAT``, ...) of every initializer."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
