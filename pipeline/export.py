"""Export of a fitted model as one Paddle static graph plus deploy.json."""
import os
import shutil
import tempfile

import paddle
from paddle.static import InputSpec

from utils import ensure_dir, sha256_file, write_json

DEPLOY_VERSION = 2


def export(model, save_dir):
    """Save ``model.detector`` as a static graph plus deploy.json; return the written paths."""
    height, width = model.preprocess.input_hw
    model.detector.eval()
    spec = [InputSpec([None, 3, height, width], "float32", "image")]
    static = paddle.jit.to_static(model.detector, input_spec=spec, full_graph=True)
    ensure_dir(save_dir)
    tmp = tempfile.mkdtemp(prefix=".export.", dir=save_dir)
    try:
        paddle.jit.save(static, os.path.join(tmp, "model"))
        graph = next(f for f in os.listdir(tmp) if f in ("model.json", "model.pdmodel"))
        digest = sha256_file(os.path.join(tmp, "model.pdiparams"))
        meta = {k: v for k, v in model.meta.items() if k != "versions"}
        deploy = {"deploy_version": DEPLOY_VERSION, "preprocess": model.preprocess.config(),
                  "input_size": [height, width], "threshold": model.meta.get("threshold"),
                  "display": model.meta.get("display"), "model": meta,
                  "graph_file": graph, "params_sha256": digest,
                  "outputs": ["anomaly_map [B, 1, H, W]", "image_score [B]"]}
        write_json(os.path.join(tmp, "deploy.json"), deploy)
        written = []
        for name in (graph, "model.pdiparams", "deploy.json"):
            os.replace(os.path.join(tmp, name), os.path.join(save_dir, name))
            written.append(os.path.join(save_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
