"""Each script's cold start on one 256 px image (a new process: imports, graph and model
loading, the image, the outputs), as a production line that starts a process per part would see
it; the median of ``runs`` fresh processes each."""
import os
import sys

import numpy as np

from .common import prepared_model, timed_run


def bench_cold_start(work, runs=3):
    m = prepared_model(work)
    image = m["images"][0]
    out_dir = os.path.join(work, "cold_out")
    py = sys.executable
    onnx = os.path.join(m["exports"]["onnx"], "model.onnx")
    paddle_graph = os.path.join(m["exports"]["paddle"], "model.json")
    commands = [
        ("python -c 'import paddle'", [py, "-c", "import paddle"]),
        ("predict.py (default engine, graphs cached)", [py, "predict.py", image, "--model_path",
                                                        m["model"], "--output", out_dir]),
        ("predict.py --save_pic false", [py, "predict.py", image, "--model_path", m["model"],
                                         "--output", out_dir, "--save_pic", "false"]),
        ("infer.py, Paddle Inference export", [py, "infer.py", "--model_file", paddle_graph,
                                               "--input_file", image, "--save_path", out_dir]),
        ("infer.py, ONNX export", [py, "infer.py", "--model_file", onnx, "--input_file", image,
                                   "--save_path", out_dir]),
        ("infer.py, ONNX export, --save_pic false", [py, "infer.py", "--model_file", onnx,
                                                     "--input_file", image, "--save_path",
                                                     out_dir, "--save_pic", "false"]),
    ]
    rows = []
    for label, cmd in commands:
        timed_run(cmd)                                     # page cache and graph cache warm
        times = [timed_run(cmd) for _ in range(runs)]
        rows.append({"command": label, "median_s": float(np.median(times)),
                     "min_s": float(min(times)), "max_s": float(max(times))})
    return rows


def bench_new_run_folder(work):
    """A fit in a new run folder with an empty graph cache (the graphs are converted), then in
    another new run folder (the user's cache has them): the second converts nothing."""
    m = prepared_model(work)
    cache = os.path.join(work, "fresh_cache")
    env = {"ORTHOAD_CACHE": cache}
    cmd = [sys.executable, "train.py", "--data_path", m["data"], "--category", "brick",
           "--no-pretrained", "--k", "100"]
    first = timed_run(cmd + ["--save_path", os.path.join(work, "newfolder_a")], env)
    second = timed_run(cmd + ["--save_path", os.path.join(work, "newfolder_b")], env)
    return {"first_s": first, "second_s": second, "graphs": sorted(os.listdir(cache))}
