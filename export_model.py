"""Export a fitted model as one Paddle static graph (image -> anomaly map, image score).

    python export_model.py --model_path output/ortho_resnet18_k100/brick.pdparams --save_dir output/export/brick

Writes model.json (or model.pdmodel with the legacy IR) + model.pdiparams, holding the backbone,
projection, Gaussian, upsampling and blur, and deploy.json (pre-processing, thresholds, display
range, metadata and the SHA-256 of model.pdiparams) that infer.py reads.
"""
import hashlib
import logging
import os
import shutil
import sys
import tempfile

from utils import (ArgumentParser, UserError, ensure_dir, model_path, run_cli,  # first: quiets Paddle
                   write_json)
import engine  # noqa: E402

logger = logging.getLogger("export")
DEPLOY_VERSION = 1


def get_args(argv=None):
    p = ArgumentParser(description="Export a fitted model to a Paddle Inference static graph.")
    p.add_argument("--model_path", type=str, default=None, help="the fitted model file")
    p.add_argument("--category", type=str, default=None,
                   help="instead of --model_path: the category under --save_path")
    engine.add_model_args(p, fitting=False)
    p.add_argument("--save_dir", type=str, default="./output/export",
                   help="folder for model.json / model.pdiparams / deploy.json")
    return p.parse_args(argv)


def sha256_file(path, block=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model, save_dir):
    """Save ``model.detector`` as a static graph plus deploy.json; return the written paths."""
    import paddle
    from paddle.static import InputSpec
    size = model.meta["crop_size"]
    model.detector.eval()
    spec = [InputSpec([None, 3, size, size], "float32", "image")]
    static = paddle.jit.to_static(model.detector, input_spec=spec, full_graph=True)
    ensure_dir(save_dir)
    tmp = tempfile.mkdtemp(prefix=".export.", dir=save_dir)
    try:
        paddle.jit.save(static, os.path.join(tmp, "model"))
        graph = next(f for f in os.listdir(tmp) if f in ("model.json", "model.pdmodel"))
        digest = sha256_file(os.path.join(tmp, "model.pdiparams"))
        meta = {k: v for k, v in model.meta.items() if k != "versions"}
        deploy = {"deploy_version": DEPLOY_VERSION, "preprocess": model.preprocess.config(),
                  "input_size": size, "threshold": model.meta.get("threshold"),
                  "display": model.meta.get("display"), "model": meta,
                  "graph_file": graph, "params_sha256": digest,
                  "outputs": ["anomaly_map [B, 1, S, S]", "image_score [B]"]}
        write_json(os.path.join(tmp, "deploy.json"), deploy)
        written = []
        for name in (graph, "model.pdiparams", "deploy.json"):
            os.replace(os.path.join(tmp, name), os.path.join(save_dir, name))
            written.append(os.path.join(save_dir, name))
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(args):
    if not args.model_path and not args.category:
        raise UserError("say which model to export: --model_path FILE or --category NAME")
    path = args.model_path or model_path(args.save_path, args.method, args.arch, args.k,
                                         args.category)
    expect = None if args.model_path else {"method": args.method, "arch": args.arch, "k": args.k}
    model = engine.load_detector(path, expect, args.weights)
    written = export(model, args.save_dir)
    print("exported " + ", ".join(written))
    return written


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
