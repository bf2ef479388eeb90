"""The TIPC harness rejects broken configs with a message that names the line."""
import os
import subprocess

import pytest

from conftest import ROOT

CONFIG = os.path.join(ROOT, "test_tipc", "configs", "OrthoAD", "train_infer_python.txt")


def _run(script, config, mode="lite_train_lite_infer"):
    return subprocess.run(["bash", os.path.join("test_tipc", script), str(config), mode],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _broken(tmp_path, lineno, new_line):
    lines = open(CONFIG).read().splitlines()
    lines[lineno - 1] = new_line
    path = tmp_path / "train_infer_python.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("lineno,line,expected", [
    (4, "gpu_lsit:0", "line 4: expected key 'gpu_list'"),
    (8, "--category:whole_train_whole_infer=carpet", "line 8: no value for mode"),
    (7, "--data_fromat:auto", "line 7: expected key '--data_format'"),
    (30, "--cpu_thread:1|2", "line 30: expected key '--cpu_threads'"),
    (25, "--formats:paddle|onnx", "line 25: expected key '--format'"),
])
def test_broken_config_line_is_named(tmp_path, lineno, line, expected):
    r = _run("test_train_inference_python.sh", _broken(tmp_path, lineno, line))
    assert r.returncode == 2
    assert expected in r.stderr, r.stderr
    assert "Run successfully" not in r.stdout


def test_unknown_mode_is_rejected():
    r = _run("prepare.sh", CONFIG, mode="lite_train")
    assert r.returncode == 2 and "unknown mode 'lite_train'" in r.stderr


def test_both_configs_share_the_layout():
    other = CONFIG.replace("OrthoAD", "PaDiM")
    keys = [[line.split(":", 1)[0] for line in open(p).read().splitlines()]
            for p in (CONFIG, other)]
    assert keys[0] == keys[1]
