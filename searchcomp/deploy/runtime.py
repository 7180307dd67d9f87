"""Deployment runtimes, and what every latency figure records: the runtime, a fixed
intra-op thread count and the CPU features that decide int8 speed.

``measure.runtime`` names one of :data:`RUNTIMES`; each knows the artifact ``export`` writes
for it and how to run those bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn

from searchcomp.deploy.cpu import features_label


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``n``, then restore it."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def threads_label(n: int) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return f"{n} thread{'s' if n != 1 else ''}"


def torch_label(kind: str, threads: int, dtype: torch.dtype = torch.float32,
                device: str = "cpu") -> str:
    """``"torch 2.14.1 eager, cpu, float32, 1 thread"`` (``kind``: eager or TorchScript)."""
    version = torch.__version__.split("+")[0]
    return (f"torch {version} {kind}, {device}, {str(dtype).removeprefix('torch.')}, "
            f"{threads_label(threads)}")


class Runtime:
    """A deployment runtime: the artifact ``export`` writes for it (:attr:`format`) and what
    runs that artifact. A trial's ``size_mib`` is the byte count of :meth:`artifact` and its
    latency is timed on the callable :meth:`runner` makes from those very bytes, so the front
    shows what ``export`` ships.
    """

    name = ""
    format = ""
    #: blocks at <= 8 bits run int8 kernels here (and simulate it while fine-tuning)
    int8 = False
    description = ""

    def artifact(self, model: nn.Module, input_shape: tuple[int, ...] | None = None,
                 calib: Tensor | None = None) -> bytes:
        """The bytes of ``model``'s artifact (see :func:`searchcomp.deploy.formats.serialize`)."""
        from searchcomp.deploy.formats import serialize

        return serialize(model, self.format, input_shape, calib)

    def runner(self, artifact: bytes, x: Tensor, threads: int,
               model: nn.Module | None = None, device: torch.device | str = "cpu"
               ) -> Callable[[], object]:
        """A call that runs the artifact on ``x`` once (all set-up done): what is timed.
        ``model``: the module the artifact was made from, or already loaded from it (formats
        whose file needs an architecture to load into). ``device``: where it runs (only the
        torch runtime runs anywhere but the CPU)."""
        raise NotImplementedError

    def running(self, threads: int) -> AbstractContextManager:
        """The context timed calls run in (torch: its thread count, inference mode)."""
        return nullcontext()

    def label(self, threads: int, dtype: torch.dtype = torch.float32,
              device: str = "cpu", artifact: bytes | None = None) -> str:
        """What measured a latency: runtime, version, threads, and the CPU's int8 features;
        with the ``artifact`` that ran, what it ran (the int8 runtime: its scheme and the int8
        kernels onnxruntime fused, read from the file and a session)."""
        raise NotImplementedError


class TorchEager(Runtime):
    """torch eager: the compact ``state_dict`` file loaded into the rebuilt architecture."""

    name, format = "torch", "state_dict"
    description = "torch eager, float weights from the compact state_dict file"

    def runner(self, artifact: bytes, x: Tensor, threads: int,
               model: nn.Module | None = None, device: torch.device | str = "cpu"
               ) -> Callable[[], object]:
        from searchcomp.choices.quant import materialize
        from searchcomp.deploy.packed import unpack_state_dict

        if model is None:
            raise ValueError("the torch runtime loads its state_dict into the model's "
                             "architecture: pass the model")
        m = materialize(model).eval()  # the architecture as deployed, then the file's state
        state = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=True)
        m.load_state_dict(unpack_state_dict(state))
        m = m.to(device)
        x = x.to(device, next((p.dtype for p in m.parameters() if p.is_floating_point()),
                              x.dtype))
        return lambda: m(x)

    def running(self, threads: int) -> AbstractContextManager:
        return _torch_running(threads)

    def label(self, threads: int, dtype: torch.dtype = torch.float32,
              device: str = "cpu", artifact: bytes | None = None) -> str:
        return f"{torch_label('eager', threads, dtype, device=device)}; {features_label()}"


class TorchScriptRuntime(Runtime):
    """TorchScript: the traced integer-weight module, run by the TorchScript interpreter."""

    name, format = "torchscript", "torchscript"
    description = "TorchScript, the traced module of the torchscript export"

    def runner(self, artifact: bytes, x: Tensor, threads: int,
               model: nn.Module | None = None, device: torch.device | str = "cpu"
               ) -> Callable[[], object]:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            m = torch.jit.load(io.BytesIO(artifact), map_location="cpu").eval()
        with _torch_running(threads):
            for _ in range(3):  # the profiling executor settles in the first runs
                m(x)
        return lambda: m(x)

    def running(self, threads: int) -> AbstractContextManager:
        return _torch_running(threads, inference=False)

    def label(self, threads: int, dtype: torch.dtype = torch.float32,
              device: str = "cpu", artifact: bytes | None = None) -> str:
        return f"{torch_label('TorchScript', threads, dtype)}; {features_label()}"


class OnnxRuntime(Runtime):
    """onnxruntime's CPU provider on the ``onnx`` file: integer weights, float kernels."""

    name, format = "onnxruntime", "onnx"
    description = "onnxruntime CPU, float kernels (integer weights dequantized at load)"

    def runner(self, artifact: bytes, x: Tensor, threads: int,
               model: nn.Module | None = None, device: torch.device | str = "cpu"
               ) -> Callable[[], object]:
        from searchcomp.deploy.onnx import session

        sess = session(artifact, threads, int8=self.int8)
        feed = {sess.get_inputs()[0].name: x.detach().cpu().float().contiguous().numpy()}
        return lambda: sess.run(None, feed)

    def label(self, threads: int, dtype: torch.dtype = torch.float32,
              device: str = "cpu", artifact: bytes | None = None) -> str:
        from searchcomp.deploy.onnx import runtime_name

        if not self.int8:
            kind = "float"
        elif artifact is None:
            kind = "int8 QDQ where the file has it (not inspected)"
        else:
            from searchcomp.deploy.int8 import describe_int8

            kind = describe_int8(artifact)
        return f"{runtime_name()}, {kind}, {threads_label(threads)}; {features_label()}"


class OnnxRuntimeInt8(OnnxRuntime):
    """onnxruntime's CPU provider on the ``onnx-int8`` file: int8 kernels where bits <= 8."""

    name, format, int8 = "onnxruntime-int8", "onnx-int8", True
    description = "onnxruntime CPU, int8 kernels for blocks at <= 8 bits (static QDQ)"


#: every runtime, by the name ``measure.runtime`` takes
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (TorchEager(), TorchScriptRuntime(),
                                                     OnnxRuntime(), OnnxRuntimeInt8())}


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name`` (``torch``, ``torchscript``, ``onnxruntime``,
    ``onnxruntime-int8``)."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def runtime_of_format(fmt: str) -> Runtime:
    """The runtime that runs artifacts of export format ``fmt``."""
    for r in RUNTIMES.values():
        if r.format == fmt:
            return r
    raise ValueError(f"no runtime runs format {fmt!r}")


@contextmanager
def _torch_running(threads: int, inference: bool = True) -> Iterator[None]:
    with torch_threads(threads), (torch.inference_mode() if inference else torch.no_grad()):
        yield
