"""Data-parallel fits with Paddle's launcher on 2 CPU processes (gloo) against the one-process
fit of the same data and seed; ranks with different data; a rank that dies."""
import csv
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from modelfile import load_model
from utils import model_path

COMMON = ["--category", "all", "--k", "8", "--no-pretrained", "--resize", "128",
          "--crop_size", "128", "--batch_size", "4", "--engine", "dygraph", "--eval"]


def _launch(script_args, log_dir, timeout=300):
    env = dict(os.environ, PADDLE_DISTRI_BACKEND="gloo", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(log_dir)] + script_args
    start = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    logs = {i: (log_dir / f"workerlog.{i}").read_text() if (log_dir / f"workerlog.{i}").exists()
            else "" for i in (0, 1)}
    return r, logs, time.time() - start


@pytest.fixture(scope="module")
def one_process(demo_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("single")
    r = subprocess.run([sys.executable, "train.py", "--data_path", demo_root, "--save_path",
                        str(save), "--cpu_threads", "1", *COMMON], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return save


def _rows(save):
    with open(save / "ortho_resnet18_k8" / "results.csv") as fh:
        return {r["category"]: r for r in csv.DictReader(fh)}


@pytest.mark.parametrize("shard", ["images", "categories"])
def test_two_processes_give_the_one_process_model(shard, demo_root, one_process, tmp_path):
    save = tmp_path / "dist"
    r, logs, _ = _launch(["train.py", "--data_path", demo_root, "--save_path", str(save),
                          "--shard", shard, *COMMON], tmp_path / "log")
    assert r.returncode == 0, (r.stdout[-1500:], logs[0][-1500:], logs[1][-1500:])
    for category in ("brick", "gravel"):
        (meta, a), (_, b) = (load_model(model_path(str(s), "ortho", "resnet18", 8, category))
                             for s in (save, one_process))
        assert meta["ranks"] == (2 if shard == "images" else 1)    # categories: a rank each
        np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-5 * np.abs(b["mean"]).max())
        cov_a = np.linalg.inv(a["precision"].astype(np.float64))
        cov_b = np.linalg.inv(b["precision"].astype(np.float64))
        assert (np.abs(cov_a - cov_b).max(axis=(1, 2))
                / np.abs(cov_b).max(axis=(1, 2))).max() < 1e-5
        np.testing.assert_allclose(a["precision"], b["precision"],
                                   atol=1e-4 * np.abs(b["precision"]).max())
    dist_rows, single_rows = _rows(save), _rows(one_process)
    assert list(dist_rows) == ["brick", "gravel", "mean"]
    for category in ("brick", "gravel"):
        for col in ("threshold", "image_auroc", "pixel_auroc"):
            assert float(dist_rows[category][col]) == pytest.approx(
                float(single_rows[category][col]), rel=1e-4)
    if shard == "images":   # 14 fitted + 2 held out: rank 0 embeds 6 + the 2, rank 1 the other 8
        assert "rank 1 embedded 8 of the 16 images" in logs[1]
    assert "image_auroc" in r.stdout or "image_auroc" in logs[0]    # rank 0 printed the table


def test_ranks_with_different_data_stop_before_merging(demo_root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(demo_root, other)
    os.remove(other / "gravel" / "train" / "good" / "003.png")
    save = tmp_path / "dist"
    r, logs, _ = _launch([os.path.join("tests", "dist_helper.py"), "--data_path_per_rank",
                          f"{demo_root},{other}", "--save_path", str(save), *COMMON],
                         tmp_path / "log")
    assert r.returncode != 0
    for rank in (0, 1):
        errors = [line for line in logs[rank].splitlines() if "error:" in line]
        assert len(errors) == 1 and "sees a different list of training images" in errors[0], \
            logs[rank][-2000:]
        assert "Traceback" not in logs[rank]
    assert not os.path.exists(model_path(str(save), "ortho", "resnet18", 8, "gravel"))


def test_a_rank_that_dies_stops_the_others_and_no_model_is_written(demo_root, tmp_path):
    save = tmp_path / "dist"
    r, logs, seconds = _launch([os.path.join("tests", "dist_helper.py"), "--data_path",
                                demo_root, "--save_path", str(save), "--die_on_rank", "1",
                                "--shard", "images", *COMMON], tmp_path / "log", timeout=180)
    assert r.returncode != 0 and seconds < 120
    assert not any(f.endswith(".safetensors") for _, _, fs in os.walk(save) for f in fs)
