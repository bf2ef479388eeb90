"""Measure fit / evaluation / inference cost on every engine against the dygraph backbone's own
forward pass over the same images, in one run.

    python benchmark.py --configs resnet18:100,wide_resnet50_2:300 --engines dygraph,auto \
        --n_train 100 --n_test 200 --size 256 --latency --hires 2048x2048,1024x4096

For every arch:k and engine, in fresh processes (peak RSS each):

* fit: a dygraph backbone-only pass over the N training images, the fit on the engine, the model
  file's save and load, a second backbone-only pass; "fit / backbone" divides the fit's wall time
  by the mean of the two passes, so that drifts of this shared machine's speed cancel out;
* evaluation (with AU-PRO): the same around the evaluation of the test images, plus the memory
  it added beyond the model (bytes per test pixel);

``--latency``: per-image latency of one forward pass at 1 / 2 threads and batch 1 / 8 on dygraph,
Paddle Inference (oneDNN on and off) and ONNX Runtime. ``--hires``: generated high-resolution
categories (defects 8-16 px) fitted and evaluated at full resolution and downscaled to about
256 x 256 pixels: peak RSS, time, pixel AUROC and AU-PRO. Weights are random (speed does not
depend on them); the data is generated.
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from utils import ArgumentParser, UserError, positive_int, run_cli, write_json  # first
import numpy as np  # noqa: E402

from datasets.synthetic import generate  # noqa: E402
from models.backbone import ARCHS  # noqa: E402
from utils import model_path  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def get_args(argv=None):
    p = ArgumentParser(description="Benchmark OrthoAD-Paddle against the backbone's forward pass.")
    p.add_argument("--configs", type=str, default="resnet18:100",
                   help="comma-separated arch:k pairs ('' for none, e.g. with --readers only)")
    p.add_argument("--engines", type=str, default="dygraph,auto",
                   help="comma-separated engines to fit and evaluate with (auto, dygraph, "
                        "inference, onnxruntime)")
    p.add_argument("--n_train", type=positive_int, default=100, help="N training images")
    p.add_bool("--also_4n", False, "also fit on 4N training images (fixed costs amortised)")
    p.add_argument("--n_test", type=positive_int, default=100, help="test images")
    p.add_argument("--size", type=positive_int, default=256, help="image side = input size")
    p.add_argument("--batch_size", type=positive_int, default=16, help="fit / eval batch size")
    p.add_bool("--latency", False, "also measure per-image latency on every engine")
    p.add_argument("--latency_runs", type=positive_int, default=5,
                   help="timed repetitions per latency figure (median)")
    p.add_argument("--hires", type=str, default="",
                   help="comma-separated HxW high-resolution categories (e.g. 2048x2048)")
    p.add_argument("--hires_k", type=positive_int, default=100, help="k of the --hires fits")
    p.add_argument("--hires_cells", type=str, default="auto",
                   help="comma-separated --cell values of the full-resolution --hires fits (the "
                        "memory / quality trade-off), e.g. 1,2,4")
    p.add_argument("--hires_n", type=str, default="40,12",
                   help="training,test images of each --hires category")
    p.add_argument("--precision", type=str, nargs="+", default=None,
                   choices=["fp32", "int8"],
                   help="compare these precisions on --configs (e.g. --precision fp32 int8): "
                        "fit, evaluation and inference images/s and the metric deltas")
    p.add_bool("--serve", False, "load-test serve.py on loopback: 1, 4 and 16 clients, a long "
               "run, an overload run, 1 against 2 workers (resnet18 k=100, 256 px, ONNX export)")
    p.add_argument("--serve_requests", type=positive_int, default=2000,
                   help="requests of the long --serve run (memory growth), e.g. 10000")
    p.add_argument("--soak", type=int, default=0,
                   help="hostile soak of serve.py: this many requests mixing good images, "
                        "garbage, 169-megapixel PNG bombs, unknown categories and slow senders "
                        "(peak RSS, answers by status, p50 / p99 of the good ones), e.g. 10000")
    p.add_argument("--patchcore", type=str, default="",
                   help="PatchCore next to OrthoAD: comma-separated arch:ratio[:n_train] "
                        "(fit with feature pass and coreset, evaluation img/s, latency, model "
                        "size, peak RSS), e.g. wide_resnet50_2:0.1:200,resnet18:0.1:476")
    p.add_argument("--patchcore_growth", type=str, default="",
                   help="with --patchcore: coreset selection time for these numbers of "
                        "training images (first entry's arch and ratio), e.g. 50,100,200,400")
    p.add_bool("--cold_start", False, "time each script's cold start on one image, and a fit "
               "in a new run folder with and without the user's graph cache")
    p.add_argument("--readers", type=int, default=0,
                   help="also time each data layout's reader on a generated tree of about this "
                        "many files (e.g. 10000)")
    p.add_argument("--data_format", type=str, default="auto",
                   choices=["auto", "mvtec", "visa", "mvtec_ad2", "mvtec_loco", "btad", "folder"],
                   help="the layout --readers times (auto: every layout)")
    p.add_argument("--work_dir", type=str, default=None, help="scratch folder (default: temp)")
    p.add_argument("--out", type=str, default="output/benchmark.json", help="JSON result file")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- child processes

def _rss_now_mib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _backbone_pass(files, size, batch):
    """Seconds of a dygraph backbone-only pass over ``files`` with the pipeline's loader."""
    import paddle

    from orthoad_runtime.prefetch import prefetch_batches
    from orthoad_runtime.transforms import Preprocess
    from pipeline.backbones import get_backbone
    bb = get_backbone(_TASK["arch"], False, None, 0)
    pre = Preprocess(size, size)
    t = time.perf_counter()
    for images in prefetch_batches(files, lambda f: pre.load(f)[0], batch):
        with paddle.no_grad():
            bb(paddle.to_tensor(np.stack(images)))[2].numpy()
    return time.perf_counter() - t


_TASK = {}


def _worker(task_json):
    """In a child process: one task (fit / eval / hires); prints its figures as JSON."""
    task = json.loads(task_json)
    _TASK.update(task)
    import cli
    from datasets import mvtec
    from modelfile import load_checked
    from pipeline import model as models_io
    from pipeline.backbones import get_backbone
    from pipeline.evaluate import EvalOptions, evaluate_category
    from pipeline.fit import FitConfig, fit_category
    from pipeline.geometry import parse_input_size
    from utils import setup_logging
    setup_logging()

    class Args:
        cpu_threads = None
    cli.apply_threads(Args)
    data, cat, save, kind = task["data"], task["category"], task["save"], task["kind"]
    arch, k, size, batch = task["arch"], task["k"], task["size"], task["batch"]
    cache = os.path.join(save, "graphs")
    path = model_path(save, "ortho", arch, k, cat)
    out = {}
    if kind in ("fit", "hires"):
        category = mvtec.read(data, cat)
        files = category.require_train()
        if kind == "fit":
            out["backbone_before_s"] = _backbone_pass(files, size, batch)
        geometry = {"resize": size, "crop_size": size} if kind == "fit" else \
            {"input_size": parse_input_size(task["input_size"])}
        cfg = FitConfig(arch=arch, k=k, batch_size=batch, engine=task["engine"],
                        cell=task.get("cell", "auto"), **geometry)
        if kind == "fit":        # the run's one-off graph build, timed apart from the fit
            from models.orthoad import OrthoAD
            from models.projection import make_projection
            from pipeline.graphs import embedder
            bb = get_backbone(arch, False, None, 0)
            det = OrthoAD(bb, make_projection("ortho", sum(bb.channels), k, 0), size)
            out["graph_build_s"] = _timed(lambda: embedder(task["engine"], det, cache))
        t = time.perf_counter()
        model = fit_category(category, cfg, get_backbone(arch, False, None, 0), cache)
        out.update({"fit_s": time.perf_counter() - t, "engine": model.meta["engine"],
                    "finalize_s": model.meta["finalize_seconds"], "cell": model.meta["cell"],
                    "input_size": model.meta["input_size"]})
        out["save_s"] = _timed(lambda: model.save(path))
        del model
        out["load_s"] = _timed(lambda: load_checked(path))
        if kind == "fit":
            out["backbone_after_s"] = _backbone_pass(files, size, batch)
        out["fit_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind in ("eval", "hires"):
        category = mvtec.read(data, cat)
        samples = category.require_test()
        if kind == "eval":
            out["backbone_before_s"] = _backbone_pass([s.path for s in samples], size, batch)
        model = models_io.load(path)
        out["graph_build_s"] = _timed(lambda: model.use_engine(task["engine"], cache))
        from pipeline.geometry import batch_for
        warm = np.zeros((batch_for(batch, model.preprocess.input_hw), 3,
                         *model.preprocess.input_hw), np.float32)
        for _ in range(2):           # full batches: ONNX Runtime's arena settles on the second
            model.score(warm)
        base_rss = _rss_now_mib()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        row = evaluate_category(model, category, EvalOptions(batch_size=batch,
                                                             eval_pro=True)).row
        out.update({"eval_s": time.perf_counter() - t, "engine": model.engine,
                    "scoring_s": row["eval_seconds"], "pro_s": row["pro_seconds"],
                    "pixel_auroc": row["pixel_auroc"], "au_pro": row["au_pro"],
                    "image_auroc": row["image_auroc"]})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        h, w = model.preprocess.input_hw
        out["eval_added_mib"] = max(0.0, peak - max(base_rss, peak_before))
        out["eval_bytes_per_px"] = out["eval_added_mib"] * 2 ** 20 / (len(samples) * h * w)
        if kind == "eval":
            out["backbone_after_s"] = _backbone_pass([s.path for s in samples], size, batch)
    print(json.dumps(out))


def _run(task):
    """``_worker(task)`` in a fresh process; returns (its figures, its peak RSS in MiB)."""
    cmd = [sys.executable, "-c", "import sys, benchmark; benchmark._worker(sys.argv[1])",
           json.dumps(task)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)           # wait4: the child's own peak RSS
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{task['kind']} failed: {err.read().decode()[-800:]}")
        return json.loads(out.read().decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _median_time(fn, runs):
    fn()                                                        # warm-up
    return float(np.median([_timed(fn) for _ in range(runs)]))


# --------------------------------------------------------------------------- measurements

def bench_config(arch, k, engines, data, work, args):
    """Fit and evaluation figures of one arch:k on every engine."""
    res = {"arch": arch, "k": k, "engines": {}}
    for engine in engines:
        save = os.path.join(work, f"models_{arch}_{k}_{engine}")
        base = {"data": data, "save": save, "arch": arch, "k": k, "size": args.size,
                "batch": args.batch_size, "engine": engine}
        fit, fit_rss = _run(dict(base, kind="fit", category="bench_n"))
        backbone = (fit["backbone_before_s"] + fit["backbone_after_s"]) / 2
        ev, ev_rss = _run(dict(base, kind="eval", category="bench_n"))
        ev_backbone = (ev["backbone_before_s"] + ev["backbone_after_s"]) / 2
        r = {"engine": fit["engine"], "fit": fit, "eval": ev,
             "backbone_img_s": args.n_train / backbone, "fit_img_s": args.n_train / fit["fit_s"],
             "fit_over_backbone": fit["fit_s"] / backbone, "fit_rss_mib": fit_rss,
             "eval_backbone_img_s": args.n_test / ev_backbone,
             "eval_img_s": args.n_test / ev["eval_s"],
             "eval_over_backbone": ev["eval_s"] / ev_backbone, "eval_rss_mib": ev_rss,
             "eval_bytes_per_px": ev["eval_bytes_per_px"]}
        if args.also_4n:
            fit4, rss4 = _run(dict(base, kind="fit", category="bench_4n"))
            r.update({"fit_over_backbone_4N": fit4["fit_s"] / (
                (fit4["backbone_before_s"] + fit4["backbone_after_s"]) / 2),
                "fit_rss_4N_mib": rss4, "fit_4N": fit4})
        res["engines"][engine] = r
    return res


def bench_latency(arch, k, work, args):
    """Per-image latency of the whole scoring graph on every engine (ms), median of runs."""
    import paddle

    from orthoad_runtime import engines as eng
    from pipeline import model as models_io
    from pipeline.export import export
    path = model_path(os.path.join(work, f"models_{arch}_{k}_dygraph"), "ortho", arch, k,
                      "bench_n")
    model = models_io.load(path)
    det, bb = model.detector, model.backbone
    exp = {fmt: os.path.join(work, f"export_{arch}_{k}_{fmt}") for fmt in ("paddle", "onnx")}
    for fmt, folder in exp.items():
        export(model, folder, fmt)
    xs = np.random.default_rng(0).standard_normal((8, 3, args.size, args.size)).astype("float32")
    lat = {}
    for threads in (1, 2):
        paddle.base.core.set_num_threads(threads)
        graphs = {"inference_ms": eng.PaddleInferenceGraph(
                      os.path.join(exp["paddle"], "model.json"),
                      os.path.join(exp["paddle"], "model.pdiparams"), threads, True),
                  "inference_native_ms": eng.PaddleInferenceGraph(
                      os.path.join(exp["paddle"], "model.json"),
                      os.path.join(exp["paddle"], "model.pdiparams"), threads, False),
                  "onnxruntime_ms": eng.OnnxRuntimeGraph(os.path.join(exp["onnx"],
                                                                      "model.onnx"), threads)}
        for batch in (1, 8):
            xb = paddle.to_tensor(xs[:batch])
            row = {}
            with paddle.no_grad():
                row["backbone_ms"] = _median_time(lambda: bb(xb)[2].numpy(), args.latency_runs)
                row["dygraph_ms"] = _median_time(lambda: det(xb)[1].numpy(), args.latency_runs)
            for name, g in graphs.items():
                row[name] = _median_time(lambda: g.run({"image": xs[:batch]}), args.latency_runs)
            lat[f"t{threads}_b{batch}"] = {n: 1000 * v / batch for n, v in row.items()}
    paddle.base.core.set_num_threads(os.cpu_count() or 1)
    return lat


def bench_hires(size_text, work, args):
    """One high-resolution category at full resolution and downscaled to ~256^2 pixels."""
    h, w = (int(v) for v in size_text.lower().split("x"))
    n_train, n_test = (int(v) for v in args.hires_n.split(","))
    data = os.path.join(work, f"hires_{h}x{w}")
    if not os.path.isdir(os.path.join(data, "hires")):
        generate(data, ("hires",), n_train=n_train, n_good=max(1, n_test // 3),
                 n_defect=n_test - max(1, n_test // 3), size=w, seed=0, height=h)
    scale = (256 * 256 / (h * w)) ** 0.5
    small = f"{max(32, round(h * scale / 16) * 16)} {max(32, round(w * scale / 16) * 16)}"
    rows = []
    runs = [("full", f"{h} {w}", c if c == "auto" else int(c))
            for c in args.hires_cells.split(",")] + [("downscaled", small, "auto")]
    for label, input_size, cell in runs:
        task = {"data": data, "save": os.path.join(data, f"models_{label}_{cell}"),
                "arch": "resnet18", "k": args.hires_k, "size": 0, "batch": args.batch_size,
                "engine": "auto", "kind": "hires", "category": "hires",
                "input_size": input_size.split(), "cell": cell}
        out, rss = _run(task)
        rows.append(dict(out, label=label, image=f"{h}x{w}", peak_rss_mib=rss))
    return rows


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


# --------------------------------------------------------------------------- tables

def markdown(results, hires, readers=()):
    lines = [] if not results else [
        "| arch | k | engine | backbone img/s (dygraph) | fit img/s | fit / backbone | "
        "finalize s | save / load s | fit RSS MiB | eval img/s | eval / backbone | "
        "eval bytes / test px | eval RSS MiB | graph build s (fit / eval) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for e in r["engines"].values():
            f4 = f" ({e['fit_over_backbone_4N']:.2f} at 4N)" if "fit_over_backbone_4N" in e \
                else ""
            lines.append(
                f"| {r['arch']} | {r['k']} | {e['engine']} | {e['backbone_img_s']:.2f} | "
                f"{e['fit_img_s']:.2f} | {e['fit_over_backbone']:.2f}{f4} | "
                f"{e['fit']['finalize_s']:.1f} | {e['fit']['save_s']:.2f} / "
                f"{e['fit']['load_s']:.2f} | {e['fit_rss_mib']:.0f} | {e['eval_img_s']:.2f} | "
                f"{e['eval_over_backbone']:.2f} | {e['eval_bytes_per_px']:.1f} | "
                f"{e['eval_rss_mib']:.0f} | {e['fit']['graph_build_s']:.1f} / "
                f"{e['eval']['graph_build_s']:.1f} |")
    if any("latency" in r for r in results):
        lines += ["", "| arch | k | threads | batch | backbone (dygraph) | dygraph | Paddle "
                  "Inference, oneDNN | Paddle Inference, oneDNN off | ONNX Runtime |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            for key, v in r.get("latency", {}).items():
                t, b = key[1:].split("_b")
                lines.append(f"| {r['arch']} | {r['k']} | {t} | {b} | {v['backbone_ms']:.1f} | "
                             f"{v['dygraph_ms']:.1f} | {v['inference_ms']:.1f} | "
                             f"{v['inference_native_ms']:.1f} | {v['onnxruntime_ms']:.1f} |")
        lines.append("(ms per image)")
    if readers:
        lines += ["", "| layout | files | training images | test images | read s (median of 3) "
                  "| us per file |", "|---|---|---|---|---|---|"]
        for r in readers:
            lines.append(f"| {r['layout']} | {r['files']} | {r['train']} | {r['test']} | "
                         f"{r['seconds']:.3f} | {r['us_per_file']:.1f} |")
    if hires:
        lines += ["", "| image | input | cell | fit s | eval s | peak RSS MiB | pixel AUROC | "
                  "AU-PRO | image AUROC |", "|---|---|---|---|---|---|---|---|---|"]
        for h in hires:
            lines.append(f"| {h['image']} ({h['label']}) | {h['input_size'][0]}x"
                         f"{h['input_size'][1]} | {h['cell']} | {h['fit_s']:.1f} | "
                         f"{h['eval_s']:.1f} | {h['peak_rss_mib']:.0f} | {h['pixel_auroc']:.4f} | "
                         f"{h['au_pro']:.4f} | {_f(h['image_auroc'])} |")
    return "\n".join(lines)


def serve_markdown(s):
    eng = s["engine_ms"]
    lines = ["", f"engine alone (ONNX Runtime, 2 threads): {eng[1]:.1f} ms per image at batch 1, "
             f"{eng[8]:.1f} at batch 8; infer.py --batch_size 8: {s['infer_b8_img_s']:.1f} img/s; "
             f"service ready {s['ready_s']:.1f} s after start",
             "", "| clients | requests | img/s | p50 ms | p99 ms | mean batch | server RSS MiB | "
             "answers |", "|---|---|---|---|---|---|---|---|"]
    for r in s["levels"]:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['img_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.2f} | "
                     f"{r['rss_mib']:.0f} | {r['statuses']} |")
    lg, ov = s["long"], s["overload"]
    lines += ["", f"long run: {lg['requests']} requests from 16 clients, {lg['img_s']:.1f} img/s, "
              f"p99 {lg['p99_ms']:.1f} ms, server RSS {lg['rss_before_mib']:.0f} -> "
              f"{lg['rss_after_mib']:.0f} MiB (peak {lg['peak_mib']:.0f}), answers "
              f"{lg['statuses']}; exit status after SIGTERM {s['exit_status']}",
              f"overload: {ov['clients']} clients x 10 requests, --max_queue {ov['max_queue']}: "
              f"answers {ov['statuses']}, server RSS {ov['rss_before_mib']:.0f} -> "
              f"{ov['rss_after_mib']:.0f} MiB",
              "", "| workers | engine threads each | img/s (16 clients) | p50 ms | p99 ms | RSS MiB "
              "(all) |", "|---|---|---|---|---|---|"]
    for w in s["workers"]:
        lines.append(f"| {w['workers']} | {w['threads_each']} | {w['img_s']:.1f} | "
                     f"{w['p50_ms']:.1f} | {w['p99_ms']:.1f} | {w['rss_mib']:.0f} |")
    return "\n".join(lines)


def soak_markdown(s):
    return "\n".join([
        "", f"soak: {s['requests']} requests from {s['clients']} clients in {s['wall_s']:.0f} s "
        f"(good 70 %, garbage 10 %, 169-megapixel PNG bombs 5 %, unknown category 10 %, slow "
        f"senders 5 % stalling until --read_timeout {s['read_timeout_s']:g} s)",
        f"answers by kind and status: {s['statuses']}",
        f"good answers: p50 {s['good_p50_ms']:.1f} ms, p99 {s['good_p99_ms']:.1f} ms; server "
        f"RSS {s['rss_before_mib']:.0f} -> {s['rss_after_mib']:.0f} MiB, peak "
        f"{s['peak_mib']:.0f} MiB; exit status after SIGTERM {s['exit_status']}"])


def cold_markdown(c):
    lines = ["", "| command, one 256 px image, new process | median s | min s | max s |",
             "|---|---|---|---|"]
    for r in c["scripts"]:
        lines.append(f"| {r['command']} | {r['median_s']:.2f} | {r['min_s']:.2f} | "
                     f"{r['max_s']:.2f} |")
    n = c["new_run_folder"]
    lines += ["", f"fit in a new run folder: {n['first_s']:.1f} s with an empty graph cache, "
              f"{n['second_s']:.1f} s in a second new folder (cache: {', '.join(n['graphs'])})"]
    return "\n".join(lines)


def _f(v):
    return "n/a" if v is None else f"{v:.4f}"


def main(args):
    configs = []
    for item in [c for c in args.configs.split(",") if c]:         # --configs "": none
        arch, _, k = item.partition(":")
        if not k.isdigit() or arch not in ARCHS:
            raise UserError(f"--configs entry '{item}' is not arch:k with arch in "
                            f"{', '.join(sorted(ARCHS))}: e.g. resnet18:100")
        configs.append((arch, int(k)))
    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in ("auto", "dygraph", "inference", "onnxruntime"):
            raise UserError(f"--engines entry '{e}' is not an engine: use auto, dygraph, "
                            "inference or onnxruntime")
    if args.latency and "dygraph" not in engines:
        raise UserError("--latency needs the dygraph fit: add dygraph to --engines")
    work = args.work_dir or tempfile.mkdtemp(prefix="orthoad_bench_")
    readers, serve, cold, precision, soak = [], None, None, [], None
    if args.precision:
        from bench.precision import bench_precision
        precision = bench_precision(configs, args.precision, work, args.n_train, args.n_test,
                                    args.size)
        configs = []                               # the precision runs replace the fit table
    if args.serve:
        from bench.serve import bench_serve
        serve = bench_serve(work, long_requests=args.serve_requests)
    if args.soak > 0:
        from bench.serve import bench_soak
        soak = bench_soak(work, args.soak)
    patchcore = None
    if args.patchcore:
        from bench.patchcore import bench_patchcore, parse
        growth = [int(v) for v in args.patchcore_growth.split(",") if v]
        patchcore = bench_patchcore(parse(args.patchcore, args.n_train), work, args.n_test,
                                    args.size, args.batch_size, growth)
    if args.cold_start:
        from bench.cold_start import bench_cold_start, bench_new_run_folder
        cold = {"scripts": bench_cold_start(work), "new_run_folder": bench_new_run_folder(work)}
    if args.readers:
        layouts = ["mvtec", "visa", "mvtec_ad2", "mvtec_loco", "btad", "folder"] \
            if args.data_format == "auto" else [args.data_format]
        from bench.readers import bench_readers
        readers = bench_readers(args.readers, layouts, work)
    data = os.path.join(work, "data")
    if configs and not os.path.isdir(os.path.join(data, "bench_n")):
        _prepare_data(data, args.n_train, args.n_test, args.size)
    results = []
    for arch, k in configs:
        res = bench_config(arch, k, engines, data, work, args)
        if args.latency:
            res["latency"] = bench_latency(arch, k, work, args)
        results.append(res)
    hires = [row for s in args.hires.split(",") if s for row in bench_hires(s, work, args)]
    out = {"results": results, "hires": hires, "readers": readers, "serve": serve,
           "precision": precision, "soak": soak, "patchcore": patchcore,
           "cold_start": cold,
           "setup": {"n_train": args.n_train, "n_test": args.n_test, "size": args.size,
                     "batch_size": args.batch_size, "cpus": os.cpu_count()}}
    write_json(args.out, out)
    print(markdown(results, hires, readers))
    if precision:
        from bench.precision import markdown as precision_markdown
        print(precision_markdown(precision))
    if serve:
        print(serve_markdown(serve))
    if soak:
        print(soak_markdown(soak))
    if cold:
        print(cold_markdown(cold))
    if patchcore:
        from bench.patchcore import markdown as patchcore_markdown
        print(patchcore_markdown(patchcore))
    print(f"\nJSON in {args.out}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
