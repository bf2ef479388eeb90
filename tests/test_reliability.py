"""Atomic artefacts under SIGKILL, Ctrl-C handling, reproducibility across thread counts."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from conftest import ROOT, run_script
from modelfile import load_model
from utils import model_path

SMALL = ["--no-pretrained", "--resize", "128", "--crop_size", "128", "--k", "8"]


def test_sigkill_during_save_keeps_the_previous_model(fitted, tmp_path):
    """A process killed while writing a model leaves the old file intact and loadable."""
    path = model_path(fitted["save"], "ortho", "resnet18", 20, "gravel")
    target = tmp_path / "gravel.safetensors"
    target.write_bytes(open(path, "rb").read())
    before = target.read_bytes()
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import numpy as np, modelfile
        def slow_view(array):          # the header is written; the arrays never come
            print("writing", flush=True)
            time.sleep(120)
        modelfile.memoryview = slow_view
        a = np.zeros((4, 2, 2), np.float32)
        modelfile.save_model({str(target)!r}, {{"k": 2}}, {{"projection": a, "mean": a,
                             "precision": a}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".tmp")]) == 1   # being written
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert target.read_bytes() == before
    meta, arrays = load_model(str(target))
    assert meta["k"] == 20 and arrays["precision"].shape == (1024, 20, 20)
    leftovers = [f for f in os.listdir(tmp_path) if f != "gravel.safetensors"]
    assert all(f.startswith(".gravel.safetensors.") and f.endswith(".tmp") for f in leftovers)


def test_ctrl_c_stops_cleanly_and_keeps_finished_categories(demo_root, tmp_path):
    save = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "train.py", "--data_path", demo_root, "--category",
                             "all", "--save_path", str(save), "--eval", *SMALL], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = save / "ortho_resnet18_k8" / "results.csv"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == \
        "train.py: interrupted by the user; finished results were kept"
    assert "Traceback" not in err
    rows = first.read_text().splitlines()
    assert rows[1].startswith("brick,")
    assert load_model(str(save / "ortho_resnet18_k8" / "brick.safetensors"))[0]["n_train"] == 16


def test_one_and_two_threads_agree(demo_root, tmp_path):
    """--cpu_threads sets the threads of the backbone and of the per-position statistics loops;
    the model records what ran, so this test checks that the two runs really differ there."""
    stats = []
    for threads in ("1", "2"):
        r = run_script("train.py", "--data_path", demo_root, "--category", "gravel",
                       "--save_path", str(tmp_path / threads), "--cpu_threads", threads, *SMALL)
        assert r.returncode == 0, r.stderr[-2000:]
        meta, arrays = load_model(model_path(str(tmp_path / threads), "ortho", "resnet18", 8,
                                             "gravel"))
        assert meta["linalg"] == {"path": "ctypes", "threads": int(threads)}
        assert meta["cpu_threads"] == int(threads)
        stats.append(arrays)
    np.testing.assert_array_equal(stats[0]["projection"], stats[1]["projection"])
    np.testing.assert_allclose(stats[0]["mean"], stats[1]["mean"], rtol=1e-5, atol=1e-5)
    scale = np.abs(stats[0]["precision"]).max()
    np.testing.assert_allclose(stats[0]["precision"], stats[1]["precision"], rtol=1e-4,
                               atol=1e-5 * scale)
