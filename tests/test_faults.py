"""Faults: a full disk (a real one: a small tmpfs, mounted when the tests run as root), a
process killed with SIGKILL, a corrupt image in the middle of a run, two runs writing one
folder at once. The previous artefacts stay intact and every error is one line."""
import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script
from datasets.synthetic import generate
from utils import model_path

FAST = ["--no-pretrained", "--k", "4", "--input_size", "64", "--batch_size", "4"]


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def disk(tmp_path):
    """A 48 MB tmpfs: a disk that can really be filled (skipped where mounting is impossible)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'}): the full-disk "
                    "tests need root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk, leave=16 << 10):
    """Fill the disk up to ``leave`` free bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def _one_line(r, *expected):
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert len(lines) == 1 and all(e in lines[0] for e in expected), r.stderr[-1500:]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faultdata")
    generate(str(root / "d"), ("brick",), n_train=12, n_good=2, n_defect=3, size=64)
    generate(str(root / "new"), ("brick",), n_train=4, n_good=1, n_defect=1, size=64, seed=5)
    return root


def test_full_disk_while_saving_a_model_keeps_the_old_one(disk, data):
    save = disk / "o"
    args = ["train.py", "--data_path", str(data / "d"), "--save_path", str(save), *FAST]
    assert run_script(*args).returncode == 0
    path = model_path(str(save), "ortho", "resnet18", 4, "brick")
    before = _digest(path)
    _fill(disk)
    _one_line(run_script(*args), "cannot write", "No space left on device", "is intact")
    assert _digest(path) == before
    assert [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")] == []


def test_full_disk_during_an_update_keeps_the_old_model(disk, data):
    save = disk / "o"
    base = ["train.py", "--save_path", str(save), *FAST]
    assert run_script(*base, "--data_path", str(data / "d"), "--save_sums").returncode == 0
    path = model_path(str(save), "ortho", "resnet18", 4, "brick")
    before = _digest(path)
    _fill(disk)
    _one_line(run_script(*base, "--data_path", str(data / "new"), "--update"),
              "No space left on device")
    assert _digest(path) == before


def test_full_disk_during_an_export_keeps_the_old_export(disk, data, tmp_path):
    save = tmp_path / "o"
    assert run_script("train.py", "--data_path", str(data / "d"), "--save_path", str(save),
                      *FAST).returncode == 0
    path = model_path(str(save), "ortho", "resnet18", 4, "brick")
    out = disk / "export"
    args = ["export_model.py", "--model_path", path, "--save_dir", str(out)]
    assert run_script(*args).returncode == 0
    before = {f: _digest(out / f) for f in os.listdir(out)}
    _fill(disk, leave=1 << 20)
    _one_line(run_script(*args), "cannot write", "No space left on device")
    assert {f: _digest(out / f) for f in os.listdir(out)} == before      # no temp folder left


def test_full_disk_for_the_graph_cache(disk, data, tmp_path):
    """An explicit engine stops with one line; auto falls back to dygraph and finishes; the
    cache holds no partial graph."""
    cache = disk / "cache"
    _fill(disk, leave=1 << 20)
    env = {"ORTHOAD_CACHE": str(cache)}
    base = ["train.py", "--data_path", str(data / "d"), "--save_path", str(tmp_path / "o"),
            *FAST]
    _one_line(run_script(*base, "--engine", "onnxruntime", env=env), "cannot write the embed "
              "graph to the cache", "ORTHOAD_CACHE")
    r = run_script(*base, env=env)
    assert r.returncode == 0 and "falling back to dygraph" in r.stderr, r.stderr[-1500:]
    assert [d for d in os.listdir(cache) if not d.startswith(".")] == []


def test_full_disk_while_writing_results_keeps_the_old_table(disk, data):
    save = disk / "o"
    assert run_script("train.py", "--data_path", str(data / "d"), "--save_path", str(save),
                      *FAST, "--eval").returncode == 0
    table = save / "ortho_resnet18_k4" / "results.csv"
    before = _digest(table)
    _fill(disk, leave=2 << 10)
    r = run_script("eval.py", "--data_path", str(data / "d"), "--save_path", str(save),
                   "--k", "4")
    _one_line(r, "No space left on device")
    assert _digest(table) == before


def _spawn(*args, env=None):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, **(env or {})))


def test_sigkill_during_an_update_keeps_the_old_model(data, tmp_path):
    save = tmp_path / "o"
    base = ["train.py", "--save_path", str(save), *FAST]
    big = tmp_path / "big"
    generate(str(big), ("brick",), n_train=600, n_good=1, n_defect=1, size=64, seed=3)
    assert run_script(*base, "--data_path", str(data / "d"), "--save_sums").returncode == 0
    path = model_path(str(save), "ortho", "resnet18", 4, "brick")
    before = _digest(path)
    log = tmp_path / "update.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, *base, "--data_path", str(big), "--update",
                                 "--engine", "dygraph"], cwd=ROOT, stderr=err)
        deadline = time.time() + 120
        while time.time() < deadline and "data layout" not in log.read_text():
            time.sleep(0.05)
        time.sleep(1.0)                              # embedding the 600 new images
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the update ended before the kill: give it more"
    assert _digest(path) == before
    r = run_script(*base, "--data_path", str(big), "--update")
    assert r.returncode == 0, r.stderr[-1500:]              # the next run simply works
    assert _digest(path) != before


def test_sigkill_during_a_graph_build_leaves_a_cache_the_next_run_uses(data, tmp_path):
    cache = tmp_path / "cache"
    env = {"ORTHOAD_CACHE": str(cache)}
    base = ["train.py", "--data_path", str(data / "d"), "--save_path", str(tmp_path / "o"),
            *FAST, "--engine", "onnxruntime"]
    proc = _spawn(*base, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (cache.is_dir() and any(
            d.startswith(".embed.") for d in os.listdir(cache))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [d for d in os.listdir(cache) if not d.startswith(".")] if cache.is_dir() else []
    assert all(os.path.isfile(cache / d / "manifest.json") for d in finished)
    r = run_script(*base, env=env)
    assert r.returncode == 0 and "embeddings by onnxruntime" in r.stderr, r.stderr[-1500:]


def test_a_corrupt_image_in_the_third_of_five_categories(tmp_path):
    """The run stops with one line naming the file; the two finished categories keep their
    models and their rows in results.csv (documented: stop, rather than skip silently)."""
    root = tmp_path / "d"
    generate(str(root / "src"), ("brick", "grass", "gravel"), n_train=6, n_good=1, n_defect=2,
             size=64)
    for i, src in enumerate(("brick", "grass", "gravel", "brick", "grass")):
        shutil.copytree(root / "src" / src, root / f"c{i + 1}")
    shutil.rmtree(root / "src")
    bad = root / "c3" / "train" / "good" / "002.png"
    bad.write_bytes(bad.read_bytes()[:100])
    save = tmp_path / "o"
    r = run_script("train.py", "--data_path", str(root), "--category", "all", "--save_path",
                   str(save), *FAST, "--eval")
    _one_line(r, "cannot read image", "002.png")
    run = save / "ortho_resnet18_k4"
    assert sorted(f for f in os.listdir(run) if f.endswith(".safetensors")) == \
        ["c1.safetensors", "c2.safetensors"]
    rows = [r["category"] for r in csv.DictReader(open(run / "results.csv"))]
    assert rows == ["c1", "c2", "mean"]


def test_two_runs_writing_one_folder_at_once_keep_both_rows(tmp_path):
    root = tmp_path / "d"
    generate(str(root), ("brick", "gravel"), n_train=6, n_good=1, n_defect=2, size=64)
    save = tmp_path / "o"
    procs = [_spawn("train.py", "--data_path", str(root), "--category", c, "--save_path",
                    str(save), *FAST, "--eval") for c in ("brick", "gravel")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-1500:]
    rows = list(csv.DictReader(open(save / "ortho_resnet18_k4" / "results.csv")))
    assert sorted(r["category"] for r in rows) == ["brick", "gravel", "mean"]
    assert all(r["image_auroc"] for r in rows)
