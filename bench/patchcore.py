"""PatchCore next to OrthoAD on the same generated images (``benchmark.py --patchcore``).

For every arch:ratio[:n_train] entry, in fresh processes (peak RSS each): the fit (feature pass,
coreset selection, the threshold's hold-out scoring), the model file's size, the evaluation of
the test images (images/s of the scoring, AU-PRO apart) and the per-image latency of the
scoring graph at batch 1 and 8; OrthoAD (k=100 for resnet18, 300 for wide_resnet50_2) on the
same images for comparison; and how the coreset selection's time grows with the number of
training images (the features of the largest set, selected on its first n images).
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import ROOT

ORTHO_K = {"resnet18": 100, "wide_resnet50_2": 300}


def parse(specs, n_train):
    """'arch:ratio[:n]' entries -> [(arch, ratio, n)]."""
    from models.archs import CHANNELS
    from utils import UserError
    out = []
    for item in [s for s in specs.split(",") if s]:
        parts = item.split(":")
        try:
            arch, ratio = parts[0], float(parts[1])
            n = int(parts[2]) if len(parts) > 2 else n_train
        except (IndexError, ValueError):
            arch, ratio, n = None, 0.0, 0
        if arch not in CHANNELS or not 0 < ratio <= 1 or n < 3 or len(parts) > 3:
            raise UserError(f"--patchcore entry '{item}' is not arch:ratio[:n_train] with arch "
                            f"in {', '.join(sorted(CHANNELS))}, 0 < ratio <= 1, n_train >= 3: "
                            "e.g. wide_resnet50_2:0.1:200")
        out.append((arch, ratio, n))
    return out


def _data(work, n_train, n_test, size):
    """A generated category with ``n_train`` training images (one per size of training set)."""
    from datasets.synthetic import generate
    root = os.path.join(work, f"patchcore_data_{n_train}_{n_test}_{size}")
    if not os.path.isdir(os.path.join(root, "brick")):
        generate(root, ("brick",), n_train=n_train, n_good=max(1, n_test // 3),
                 n_defect=n_test - max(1, n_test // 3), size=size, seed=0)
    return root


def worker(task_json):
    """In a child process: fit and evaluate one configuration; print its figures as JSON."""
    task = json.loads(task_json)
    import cli
    from datasets import mvtec
    from pipeline.backbones import get_backbone
    from pipeline.evaluate import EvalOptions, evaluate_category
    from pipeline.fit import FitConfig, fit_category
    from pipeline.fit_patchcore import fit_patchcore
    from pipeline import model as models_io
    from utils import setup_logging

    class Args:
        cpu_threads = None
    setup_logging()
    cli.apply_threads(Args)
    arch, method, size = task["arch"], task["method"], task["size"]
    category = mvtec.read(task["data"], "brick")
    cache = os.path.join(task["work"], "graphs")
    path = os.path.join(task["work"], f"{method}_{arch}_{task['ratio']}_{task['n']}.safetensors")
    cfg = FitConfig(method=method, arch=arch, k=task.get("k", 100), resize=size,
                    crop_size=size, batch_size=task["batch"], coreset_ratio=task["ratio"])
    fit = fit_patchcore if method == "patchcore" else fit_category
    bb = get_backbone(arch, False, None, 0)
    t = time.perf_counter()
    model = fit(category, cfg, bb, cache)
    out = {"fit_s": time.perf_counter() - t, "engine": model.meta["engine"]}
    out["fit_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "patchcore":
        pc = model.meta["patchcore"]
        out.update({"feature_s": pc["feature_seconds"], "coreset_s": pc["coreset_seconds"],
                    "bank": pc["bank_size"], "patches": pc["n_patches"]})
    model.save(path)
    out["model_mb"] = os.path.getsize(path) / 1e6
    del model
    model = models_io.load(path).use_engine("auto", cache)
    x = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    model.score(x)                                         # warm-up (arena, caches)
    for batch in (1, 8):
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            model.score(x[:batch])
            runs.append(time.perf_counter() - t)
        out[f"latency_b{batch}_ms"] = 1000 * float(np.median(runs)) / batch
    row = evaluate_category(model, category, EvalOptions(batch_size=task["batch"],
                                                         eval_pro=True)).row
    n_test = len(category.require_test())
    out.update({"eval_scoring_s": row["eval_seconds"], "eval_img_s": n_test / row["eval_seconds"],
                "image_auroc": row["image_auroc"], "pixel_auroc": row["pixel_auroc"],
                "au_pro": row["au_pro"]})
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def growth_worker(task_json):
    """In a child process: the features of the largest training set once, then the coreset
    selection's time on the first n images' patches for each n; print JSON."""
    task = json.loads(task_json)
    import cli
    from datasets import mvtec
    from models import coreset
    from models.patchcore import PatchCore
    from orthoad_runtime.transforms import Preprocess
    from pipeline.backbones import get_backbone
    from pipeline.fit import embed_files
    from pipeline.graphs import embedder

    class Args:
        cpu_threads = None
    cli.apply_threads(Args)
    size, counts = task["size"], task["counts"]
    files = mvtec.read(task["data"], "brick").require_train()[:max(counts)]
    det = PatchCore(get_backbone(task["arch"], False, None, 0), size)
    embed, _ = embedder("auto", det, os.path.join(task["work"], "graphs"))
    feats = np.concatenate([np.asarray(y).reshape(-1, det.k) for y in embed_files(
        embed, files, Preprocess(size, size), task["batch"], "features")])
    out = []
    for n in counts:
        part = feats[:n * det.n_positions]
        picks, seconds = coreset.select(part, max(9, round(task["ratio"] * len(part))), 0)
        out.append({"n_train": n, "patches": len(part), "bank": len(picks),
                    "coreset_s": seconds})
    print(json.dumps(out))


def _child(fn, task):
    cmd = [sys.executable, "-c", f"import sys, bench.patchcore as b; b.{fn}(sys.argv[1])",
           json.dumps(task)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{fn} failed: {err.read().decode()[-800:]}")
        return json.loads(out.read().decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def bench_patchcore(specs, work, n_test, size, batch, growth=(), ortho=True):
    """Figures of every (arch, ratio, n_train) in ``specs``, OrthoAD beside each arch and
    n_train, and the coreset growth over ``growth`` (numbers of training images)."""
    rows, seen = [], set()
    for arch, ratio, n in specs:
        data = _data(work, n, n_test, size)
        base = {"data": data, "work": work, "arch": arch, "size": size, "batch": batch,
                "n": n}
        out, rss = _child("worker", dict(base, method="patchcore", ratio=ratio))
        rows.append(dict(out, method="patchcore", arch=arch, ratio=ratio, n_train=n,
                         n_test=n_test, process_peak_mib=rss))
        if ortho and (arch, n) not in seen:
            seen.add((arch, n))
            out, rss = _child("worker", dict(base, method="ortho", ratio=0.0,
                                             k=ORTHO_K[arch]))
            rows.append(dict(out, method=f"ortho k={ORTHO_K[arch]}", arch=arch, ratio=None,
                             n_train=n, n_test=n_test, process_peak_mib=rss))
    grow = []
    if growth:
        arch, ratio, _ = specs[0]
        data = _data(work, max(growth), n_test, size)
        grow, _ = _child("growth_worker", {"data": data, "work": work, "arch": arch,
                                           "size": size, "batch": batch, "ratio": ratio,
                                           "counts": sorted(growth)})
        for g in grow:
            g.update(arch=arch, ratio=ratio)
    return {"rows": rows, "growth": grow}


def markdown(result):
    lines = ["\n### PatchCore next to OrthoAD (same images; random weights, so AUROCs are not "
             "ImageNet figures)\n",
             "| method | arch | coreset | train imgs | fit s | features s | coreset s | bank | "
             "model MB | fit peak MiB | eval img/s | latency b1 ms | latency b8 ms/img | "
             "image AUROC | pixel AUROC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        pc = r["method"] == "patchcore"
        ratio = f"{100 * r['ratio']:g} %" if pc else "-"
        lines.append(
            f"| {r['method']} | {r['arch']} | {ratio} | "
            f"{r['n_train']} | {r['fit_s']:.1f} | {_one(r.get('feature_s'))} | "
            f"{_one(r.get('coreset_s'))} | {r['bank'] if pc else '-'} | "
            f"{r['model_mb']:.1f} | {r['fit_rss_mib']:.0f} | {r['eval_img_s']:.2f} | "
            f"{r['latency_b1_ms']:.0f} | {r['latency_b8_ms']:.0f} | {r['image_auroc']:.3f} | "
            f"{r['pixel_auroc']:.3f} |")
    if result["growth"]:
        lines += ["\n#### Coreset selection time against training images\n",
                  "| arch | coreset | train imgs | patches | bank | coreset s |",
                  "|---|---|---|---|---|---|"]
        for g in result["growth"]:
            lines.append(f"| {g['arch']} | {100 * g['ratio']:g} % | {g['n_train']} | "
                         f"{g['patches']} | {g['bank']} | {g['coreset_s']:.1f} |")
    return "\n".join(lines)


def _one(v):
    return "-" if v is None else f"{v:.1f}"
