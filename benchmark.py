"""Measure fit / eval / inference cost against the backbone's own forward pass, in one run.

    python benchmark.py --configs resnet18:100,wide_resnet50_2:100,wide_resnet50_2:300 \
        --n_train 100 --n_test 100 --size 256 --out output/benchmark.json

For every arch:k it reports: backbone-only images/s (stem + layer1..3: the bound), fit images/s
and fit / backbone time (N and 4N images), the finalisation time, peak RSS of fits on N and 4N
training images (separate processes), eval images/s without PRO, the share of scoring (projection,
Mahalanobis, upsampling, blur) in a forward pass, and dygraph / Paddle Inference latency per
image (batch 1 and 8, 1 and 2 threads; Paddle Inference with and without oneDNN). Once: AU-PRO
time on --pro_maps maps. Weights are random (speed does not depend on them); the data is the
generated demo texture.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from utils import ArgumentParser, UserError, positive_int, run_cli, write_json  # first
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import metrics  # noqa: E402
from modelfile import load_model  # noqa: E402
from models.backbone import ARCHS  # noqa: E402
from pipeline import model as models_io  # noqa: E402
from pipeline.backbones import get_backbone  # noqa: E402
from pipeline.evaluate import EvalOptions, evaluate_category  # noqa: E402
from pipeline.export import export  # noqa: E402
from pipeline.fit import FitConfig, fit_category  # noqa: E402
from datasets.synthetic import generate  # noqa: E402
from utils import model_path  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def get_args(argv=None):
    p = ArgumentParser(description="Benchmark OrthoAD-Paddle against the backbone's forward pass.")
    p.add_argument("--configs", type=str, default="resnet18:100",
                   help="comma-separated arch:k pairs")
    p.add_argument("--n_train", type=positive_int, default=100,
                   help="N training images (a second fit uses 4N)")
    p.add_argument("--n_test", type=positive_int, default=100, help="test images")
    p.add_argument("--size", type=positive_int, default=256, help="image side = input size")
    p.add_argument("--batch_size", type=positive_int, default=16, help="fit / eval batch size")
    p.add_argument("--pro_maps", type=positive_int, default=900,
                   help="maps of --size px for the AU-PRO timing")
    p.add_argument("--latency_runs", type=positive_int, default=5,
                   help="timed repetitions per latency figure (median)")
    p.add_argument("--work_dir", type=str, default=None, help="scratch folder (default: temp)")
    p.add_argument("--out", type=str, default="output/benchmark.json", help="JSON result file")
    return p.parse_args(argv)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _median_time(fn, runs):
    fn()                                                        # warm-up
    return float(np.median([_timed(fn) for _ in range(runs)]))


def _fit_worker(data, category, save, arch, k, size, batch):
    """In a child process: backbone-only pass over the training images, the fit, a second
    backbone-only pass; prints their times as JSON.

    The fit is compared with the mean of the two passes around it, on the same images with the
    same loader, so that drifts of a shared machine's speed between measurements cancel out.
    """
    from datasets.mvtec import MVTecCategory, prefetch_batches
    from datasets.transforms import Preprocess, load_rgb
    k, size, batch = int(k), int(size), int(batch)
    bb = get_backbone(arch, False, None, 0)
    files = MVTecCategory(data, category).train_files()
    pre = Preprocess(size, size)

    def backbone_pass():
        t = time.perf_counter()
        for images in prefetch_batches(files, lambda f: pre.image(load_rgb(f)), batch):
            with paddle.no_grad():
                bb(paddle.to_tensor(np.stack(images)))[2].numpy()
        return time.perf_counter() - t

    before = backbone_pass()
    cfg = FitConfig(arch=arch, k=k, resize=size, crop_size=size, batch_size=batch)
    model = fit_category(data, category, cfg, bb)
    meta = model.meta
    path = model_path(save, "ortho", arch, k, category)
    save_s = _timed(lambda: model.save(path))
    del model
    load_s = _timed(lambda: load_model(path))
    after = backbone_pass()
    print(json.dumps({"backbone_s": (before + after) / 2, "backbone_before_s": before,
                      "backbone_after_s": after, "fit_s": meta["fit_seconds"],
                      "finalize_s": meta["finalize_seconds"],
                      "save_s": save_s, "load_s": load_s}))


def _fit_process(data, category, save, arch, k, size, batch):
    """``_fit_worker`` in a fresh process; returns (its figures, its peak RSS in MiB)."""
    cmd = [sys.executable, "-c", "import sys, benchmark; benchmark._fit_worker(*sys.argv[1:])",
           data, category, save, arch, str(k), str(size), str(batch)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)          # wait4: the child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"fit failed: {err.read().decode()[-500:]}")
        return json.loads(out.read().decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def _inference_latency(export_dir, threads, batch, x, runs, mkldnn):
    from paddle import inference
    cfg = inference.Config(os.path.join(export_dir, "model.json"),
                           os.path.join(export_dir, "model.pdiparams"))
    cfg.disable_gpu()
    if mkldnn:
        cfg.enable_mkldnn()
    else:
        cfg.disable_mkldnn()
    cfg.set_cpu_math_library_num_threads(threads)
    cfg.disable_glog_info()
    pred = inference.create_predictor(cfg)
    handle = pred.get_input_handle(pred.get_input_names()[0])
    xb = np.ascontiguousarray(x[:batch])

    def run():
        handle.reshape(list(xb.shape))
        handle.copy_from_cpu(xb)
        pred.run()
        for name in pred.get_output_names():
            pred.get_output_handle(name).copy_to_cpu()
    return _median_time(run, runs) / batch


def bench_config(arch, k, data, work, args):
    """All figures of one arch:k."""
    res = {"arch": arch, "k": k}
    bb = get_backbone(arch, False, None, 0)
    n, size = args.n_train, args.size
    x = paddle.randn([args.batch_size, 3, size, size])

    save = os.path.join(work, f"models_{arch}_{k}")
    fit_n, rss_n = _fit_process(data, "bench_n", save, arch, k, size, args.batch_size)
    fit_4n, rss_4n = _fit_process(data, "bench_4n", save, arch, k, size, args.batch_size)
    res.update({"backbone_img_s": n / fit_n["backbone_s"], "fit_img_s": n / fit_n["fit_s"],
                "fit_over_backbone": fit_n["fit_s"] / fit_n["backbone_s"],
                "fit_over_backbone_4N": fit_4n["fit_s"] / fit_4n["backbone_s"],
                "finalize_s": fit_n["finalize_s"], "finalize_4N_s": fit_4n["finalize_s"],
                "save_s": fit_n["save_s"], "load_s": fit_n["load_s"], "fit_N": fit_n,
                "fit_4N": fit_4n,
                "peak_rss_N_mib": rss_n, "peak_rss_4N_mib": rss_4n,
                "rss_4N_over_N": rss_4n / rss_n})

    model = models_io.load(model_path(save, "ortho", arch, k, "bench_n"))
    row = evaluate_category(model, data, "bench_n",
                            EvalOptions(batch_size=args.batch_size, eval_pro=True))
    res["eval_img_s"] = row["eval_img_per_s"]
    res["au_pro_s_category"] = row["pro_seconds"]

    det = model.detector
    with paddle.no_grad():
        # interleaved pairs (backbone, then the same stage + scoring) so that drifts of this shared
        # machine's speed hit both sides; median of the per-pair shares
        det(x)
        embed_pct, score_pct = [], []
        for _ in range(max(3, args.latency_runs)):
            t_bb = _timed(lambda: [f.numpy() for f in bb(x)])
            t_embed = _timed(lambda: det.embed(x).numpy())
            t_full = _timed(lambda: det(x)[1].numpy())
            embed_pct.append(100 * (t_embed - t_bb) / t_bb)
            score_pct.append(100 * (t_full - t_bb) / t_bb)
    res["projection_pct_of_backbone"] = float(np.median(embed_pct))
    res["scoring_pct_of_backbone"] = float(np.median(score_pct))

    export_dir = os.path.join(work, f"export_{arch}_{k}")
    export(model, export_dir)
    xs = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype("float32")
    lat = {}
    for threads in (1, 2):
        paddle.base.core.set_num_threads(threads)
        for batch in (1, 8):
            xb = paddle.to_tensor(xs[:batch])
            with paddle.no_grad():
                dy = _median_time(lambda: det(xb)[1].numpy(), args.latency_runs) / batch
                bbt = _median_time(lambda: bb(xb)[2].numpy(), args.latency_runs) / batch
            inf = _inference_latency(export_dir, threads, batch, xs, args.latency_runs, True)
            nat = _inference_latency(export_dir, threads, batch, xs, args.latency_runs, False)
            lat[f"t{threads}_b{batch}"] = {"dygraph_ms": 1000 * dy, "inference_ms": 1000 * inf,
                                           "inference_native_ms": 1000 * nat,
                                           "backbone_ms": 1000 * bbt}
    paddle.base.core.set_num_threads(os.cpu_count() or 1)
    res["latency"] = lat
    return res


def bench_au_pro(n_maps, size):
    rng = np.random.default_rng(0)
    maps = rng.random((n_maps, size, size), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[n_maps // 2:, size // 4:size // 2, size // 4:size // 2] = True
    maps[masks] += 0.5
    t = time.perf_counter()
    value = metrics.au_pro(masks, maps)
    return {"maps": n_maps, "size": size, "seconds": time.perf_counter() - t, "au_pro": value}


def _prepare_data(root, n, m, size):
    generate(root, ("brick",), n_train=4 * n, n_good=max(1, m // 3), n_defect=max(1, m - m // 3),
             size=min(size, 512), seed=0)
    src = os.path.join(root, "brick")
    files = sorted(os.listdir(os.path.join(src, "train", "good")))
    for name, count in (("bench_4n", 4 * n), ("bench_n", n)):
        dst = os.path.join(root, name)
        os.makedirs(os.path.join(dst, "train", "good"))
        for f in files[:count]:
            os.symlink(os.path.join(src, "train", "good", f),
                       os.path.join(dst, "train", "good", f))
        for sub in ("test", "ground_truth"):
            os.symlink(os.path.join(src, sub), os.path.join(dst, sub))


def markdown(results, pro):
    lines = ["| arch | k | backbone img/s | fit img/s | fit / backbone (N / 4N) | finalize s | "
             "save / load s | RSS N / 4N MiB | eval img/s | scoring % of backbone | "
             "AU-PRO s (category) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['arch']} | {r['k']} | {r['backbone_img_s']:.2f} | "
                     f"{r['fit_img_s']:.2f} | {r['fit_over_backbone']:.2f} / "
                     f"{r['fit_over_backbone_4N']:.2f} | "
                     f"{r['finalize_s']:.1f} | {r['save_s']:.2f} / {r['load_s']:.2f} | "
                     f"{r['peak_rss_N_mib']:.0f} / "
                     f"{r['peak_rss_4N_mib']:.0f} ({r['rss_4N_over_N']:.2f}x) | "
                     f"{r['eval_img_s']:.2f} | {r['scoring_pct_of_backbone']:.1f} | "
                     f"{r['au_pro_s_category']:.2f} |")
    lines += ["", "| arch | k | threads | batch | backbone ms/img | dygraph ms/img | "
              "Paddle Inference ms/img (oneDNN, default) | Paddle Inference ms/img (oneDNN off) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for key, v in r["latency"].items():
            t, b = key[1:].split("_b")
            lines.append(f"| {r['arch']} | {r['k']} | {t} | {b} | {v['backbone_ms']:.1f} | "
                         f"{v['dygraph_ms']:.1f} | {v['inference_ms']:.1f} | "
                         f"{v['inference_native_ms']:.1f} |")
    lines += ["", f"AU-PRO on {pro['maps']} maps of {pro['size']}x{pro['size']} px: "
                  f"{pro['seconds']:.2f} s"]
    return "\n".join(lines)


def main(args):
    configs = []
    for item in args.configs.split(","):
        arch, _, k = item.partition(":")
        if not k.isdigit() or arch not in ARCHS:
            raise UserError(f"--configs entry '{item}' is not arch:k with arch in "
                            f"{', '.join(sorted(ARCHS))}: e.g. resnet18:100")
        configs.append((arch, int(k)))
    work = args.work_dir or tempfile.mkdtemp(prefix="orthoad_bench_")
    data = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(data, "bench_n")):
        _prepare_data(data, args.n_train, args.n_test, args.size)
    results = [bench_config(arch, k, data, work, args) for arch, k in configs]
    pro = bench_au_pro(args.pro_maps, args.size)
    out = {"results": results, "au_pro": pro,
           "setup": {"n_train": args.n_train, "n_test": args.n_test, "size": args.size,
                     "batch_size": args.batch_size, "cpus": os.cpu_count(),
                     "paddle": paddle.__version__}}
    write_json(args.out, out)
    print(markdown(results, pro))
    print(f"\nJSON in {args.out}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
