"""The command line: inspect on the shipped spaces and on a tiny one."""

from __future__ import annotations

import json
import subprocess
import sys

from searchcomp.cli import main

from .conftest import ROOT


def test_inspect_resnet50_json_lists_16_blocks_and_23_5m_params(capsys):
    assert main(["inspect", str(ROOT / "spaces" / "resnet50.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["blocks"]) == 16
    assert all(set(b) >= {"name", "choices"} for b in out["blocks"])
    assert out["blocks"][0]["choices"]["conv"][0] == "keep"
    assert round(out["base"]["params"] / 1e6, 1) == 23.5
    assert out["base"]["size_mib"] > 80
    assert out["base"]["flops"] > 0 and out["base"]["latency_ms"] > 0
    assert isinstance(out["space_size"], int) and out["space_size"] > 10**20
    assert "torch" in out["base"]["latency_runtime"]


def test_inspect_fashion_text_works_offline(tmp_path):
    r = subprocess.run([sys.executable, "-m", "searchcomp", "inspect",
                        str(ROOT / "spaces" / "resnet18-fashion.yaml")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "blocks (8)" in r.stdout and "layer4.1" in r.stdout
    assert "params 11,172,810" in r.stdout
    assert "the state_dict file of runtime torch" in r.stdout
    assert "int8 speed depends on:" in r.stdout  # the CPU's VNNI / AMX / AVX2
    assert not (tmp_path / "studies").exists(), "inspect must not train or write anything"


def test_inspect_with_set_and_quick(tiny_space_file, capsys):
    assert main(["inspect", str(tiny_space_file), "--json", "--set",
                 "blocks.default.bits=[32, 8, 4]"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["blocks"][0]["choices"]["bits"] == [32, 8, 4]
    assert out["space_size"] == (3 * 2 * 3) ** 8 * 2
    assert out["head"] == {"name": "fc", "choices": {"head": ["keep", "meta:2"]},
                           "candidates": ["fc Linear 512->10 (head)"]}


def test_inspect_in_the_int8_runtime_records_runtime_and_cpu(tiny_space_file, capsys):
    from searchcomp.deploy.cpu import cpu_features

    assert main(["inspect", str(tiny_space_file), "--json", "--set",
                 "measure.runtime=onnxruntime-int8"]) == 0
    out = json.loads(capsys.readouterr().out)
    base = out["base"]
    assert base["runtime"] == "onnxruntime-int8" and base["format"] == "onnx-int8"
    # the base is all float: its file runs no int8 kernel, and the label says so
    assert "float: no int8 kernel" in base["latency_runtime"]
    # the scheme: the setting, this CPU's kernel probe of each, no choice made yet
    assert out["int8"]["setting"] == "auto" and out["int8"]["chosen"] is None
    assert set(out["int8"]["kernel_exact"]) == {"u8s8", "u8s8-rr", "u8u8", "s8s8"}
    feats = cpu_features()
    assert base["cpu_features"] == (list(feats) if feats is not None else None)


def test_bad_set_exits_2(tiny_space_file, capsys):
    assert main(["inspect", str(tiny_space_file), "--set", "data.val_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set: data.val_size:")
    assert main(["inspect", str(tiny_space_file), "--set", "measure.runtime=tvm"]) == 2
    assert "'torch', 'onnxruntime' or 'onnxruntime-int8'" in capsys.readouterr().err
