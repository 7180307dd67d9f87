"""A third-party choice, pip-installed from a temp dir, is found through the
``searchcomp.choices`` entry-point group and runs in a real search: no fork needed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = '''
"""lowrank:R -- a k x k conv to R channels then a 1x1 to the output: a rank-R factorisation."""

import torch
from torch import nn

from searchcomp.choices import Choice, register
from searchcomp.choices.fit import layer_error


@register
class LowRank(Choice):
    name = "lowrank"
    needs_arg = True
    code = "L"
    description = "k x k conv to R channels + 1x1 (truncated SVD init)"

    def check(self, layer, arg):
        if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
            return "lowrank replaces a dense nn.Conv2d"
        c, d, (kh, kw) = layer.in_channels, layer.out_channels, layer.kernel_size
        if not 1 <= arg < min(d, c * kh * kw):
            return f"lowrank:{arg} needs 1 <= R < {min(d, c * kh * kw)}"
        return None

    def expected_params(self, layer, arg):
        kh, kw = layer.kernel_size
        bias = layer.out_channels if layer.bias is not None else 0
        return layer.in_channels * kh * kw * arg + arg * layer.out_channels + bias

    def structure(self, layer, arg):
        first = nn.Conv2d(layer.in_channels, arg, layer.kernel_size, layer.stride,
                          layer.padding, layer.dilation, bias=False)
        return nn.Sequential(first, nn.Conv2d(arg, layer.out_channels, 1,
                                              bias=layer.bias is not None))

    def initialise(self, new, layer, arg, inputs):
        w = layer.weight.detach().flatten(1).double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:arg].sqrt()
        with torch.no_grad():
            new[0].weight.copy_((root[:, None] * vh[:arg]).reshape(new[0].weight.shape))
            new[1].weight.copy_((u[:, :arg] * root).reshape(new[1].weight.shape))
            if layer.bias is not None:
                new[1].bias.copy_(layer.bias.detach())
        return layer_error(layer, new, inputs)
'''

SPACE = """\
name: plugin-search
model: {{arch: resnet18, num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}}
base: {{source: train, epochs: 1}}
blocks:
  default: {{conv: [keep, lowrank:4], bits: [32, 8]}}
finetune: {{steps: 2}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 3, anchors: false, seed_configs: [{{conv: lowrank:4}}]}}
studies_dir: {studies}
"""


@pytest.mark.slow
def test_pip_installed_choice_runs_in_a_search(tmp_path):
    src = tmp_path / "plugin"
    src.mkdir()
    (src / "searchcomp_lowrank.py").write_text(textwrap.dedent(PLUGIN))
    (src / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "searchcomp-lowrank"
        version = "0.1"

        [project.entry-points."searchcomp.choices"]
        lowrank = "searchcomp_lowrank:LowRank"

        [tool.setuptools]
        py-modules = ["searchcomp_lowrank"]
        """))
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(site.glob("searchcomp_lowrank-0.1.dist-info/entry_points.txt"))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(site), os.environ.get("PYTHONPATH")]))}
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.format(studies=tmp_path / "studies"))
    run = subprocess.run([sys.executable, "-m", "searchcomp", "run", str(space), "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [x for x in run.stderr.splitlines() if x.startswith("trial")]
    assert len(lines) == 3
    assert "conv LLLLLLLL" in lines[1], lines  # the seed: lowrank:4 on every block
    front = subprocess.run([sys.executable, "-m", "searchcomp", "front", str(space)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert front.returncode == 0, front.stderr
    assert "L lowrank" in front.stdout  # the legend knows the plugin's code

    # without the plugin on the path, the same space is refused with the line of the value
    plain = subprocess.run([sys.executable, "-m", "searchcomp", "inspect", str(space)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert plain.returncode == 2
    assert "unknown conv choice 'lowrank'" in plain.stderr and f"{space}:6" in plain.stderr

