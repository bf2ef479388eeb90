"""Helpers of the benchmarks: a small fitted model and its export, subprocess timing, RSS."""
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid, field="VmRSS"):
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_run(cmd, env=None):
    """Seconds a command takes from start to exit (a fresh process); raises on failure."""
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {r.stderr[-800:]}")
    return time.perf_counter() - t


def prepared_model(work, arch="resnet18", k=100, size=256, n_train=32, n_test=48):
    """A fitted model (random weights, generated brick images), its Paddle and ONNX exports, and
    a folder of test images; built once under ``work``."""
    from datasets.synthetic import generate
    data = os.path.join(work, f"serve_data_{size}")
    run = os.path.join(work, f"serve_run_{arch}_{k}_{size}")
    model = os.path.join(run, "brick.safetensors")
    exports = {f: os.path.join(work, f"serve_export_{arch}_{k}_{size}_{f}", "brick")
               for f in ("paddle", "onnx")}
    if not os.path.isdir(data):
        generate(data, ("brick",), n_train=n_train, n_good=n_test // 3,
                 n_defect=n_test - n_test // 3, size=size, seed=0)
    py = sys.executable
    if not os.path.isfile(model):
        subprocess.run([py, "train.py", "--data_path", data, "--category", "brick", "--arch",
                        arch, "--k", str(k), "--no-pretrained", "--save_path",
                        os.path.join(work, "serve_models")], cwd=ROOT, check=True,
                       capture_output=True)
        os.makedirs(run, exist_ok=True)
        os.replace(os.path.join(work, "serve_models", f"ortho_{arch}_k{k}",
                                "brick.safetensors"), model)
    for fmt, folder in exports.items():
        if not os.path.isfile(os.path.join(folder, "deploy.json")):
            subprocess.run([py, "export_model.py", "--model_path", model, "--save_dir", folder,
                            "--format", fmt], cwd=ROOT, check=True, capture_output=True)
    images = os.path.join(data, "brick", "test")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(images) for f in fs
                   if f.endswith(".png"))
    flat = os.path.join(work, f"serve_flat_{size}")              # one folder (infer.py)
    if not os.path.isdir(flat):
        os.makedirs(flat)
        for i, f in enumerate(files):
            os.symlink(f, os.path.join(flat, f"{i:04d}.png"))
    return {"data": data, "run": run, "model": model, "exports": exports, "images": files,
            "flat": flat}
