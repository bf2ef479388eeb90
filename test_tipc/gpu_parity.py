"""CPU and GPU give the same model and maps: fit a generated category on the GPU (statistics on
the device) and on the CPU (BLAS / LAPACK), then score the same test images with both.

    python test_tipc/gpu_parity.py          (part of test_tipc/gpu_check.sh)
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from datasets import mvtec  # noqa: E402
from datasets.synthetic import generate  # noqa: E402
from orthoad_runtime.transforms import load_rgb  # noqa: E402
from pipeline.backbones import get_backbone  # noqa: E402
from pipeline.fit import FitConfig, fit_category  # noqa: E402


def main():
    work = tempfile.mkdtemp()
    generate(work, ("brick",), n_train=24, n_good=3, n_defect=6, size=256, seed=0)
    models = {}
    for device, stats in (("cpu", "cpu"), ("gpu", "device")):
        paddle.set_device(device)
        cfg = FitConfig(k=100, engine="dygraph", stats=stats)
        models[device] = fit_category(mvtec.read(work, "brick"), cfg,
                                      get_backbone("resnet18", False, None, 0),
                                      os.path.join(work, "graphs"))
    a, b = models["gpu"].arrays, models["cpu"].arrays
    rel = {n: float(np.abs(a[n] - b[n]).max() / np.abs(b[n]).max()) for n in ("mean", "precision")}
    samples = mvtec.read(work, "brick").require_test()
    x = np.stack([models["cpu"].preprocess.image(load_rgb(s.path)) for s in samples])
    maps = {}
    for device in ("cpu", "gpu"):
        paddle.set_device(device)
        maps[device] = models[device].score(x)[0]
    rel["maps"] = float(np.abs(maps["gpu"] - maps["cpu"]).max() / np.abs(maps["cpu"]).max())
    limits = {"mean": 1e-4, "precision": 1e-3, "maps": 1e-3}
    for name, value in rel.items():
        print(f"{name}: GPU vs CPU max difference / scale = {value:.2e} (limit {limits[name]:g})")
    ok = all(rel[n] <= limits[n] for n in rel)
    print("CPU and GPU agree" if ok else "CPU and GPU DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
