"""The model as shipped: compact integer formats, TorchScript and ONNX artifacts, the
runtimes that run them, and ``load`` (torch alone; onnxruntime for an ONNX export).

Submodules are imported where used, so ``searchcomp.deploy.load`` stays light.
"""
