"""int8 against fp32 on the same data, in one run: for each arch:k, a fit with evaluation in
each precision (images/s of both, the int8 set-up time, image AUROC, pixel AUROC, AU-PRO, and
the median and largest relative change of a test image's score), then each model's ONNX export under infer.py --batch_size 8 and
its graph alone at batch 8 (alternating the precisions twice, against this machine's drift)."""
import csv
import os
import re
import subprocess
import sys
import time

import numpy as np

from modelfile import read_meta

from .common import ROOT


def _run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {r.stderr[-1200:]}")
    return r.stdout


def _engine_ms(export, images, runs=12):
    code = f"""
import json, time, numpy as np
from orthoad_runtime import Detector
d = Detector.from_export({export!r}, threads=2)
x = [d.prepare(f) for f in {images[:8]!r}]
d.score(x)
ts = []
for _ in range({runs}):
    t = time.perf_counter(); d.score(x); ts.append(time.perf_counter() - t)
print(1000 * float(np.median(ts)) / len(x))
"""
    return float(_run([sys.executable, "-c", code]).strip().splitlines()[-1])


def bench_precision(configs, precisions, work, n_train, n_test, size=256):
    from datasets.synthetic import generate
    data = os.path.join(work, f"precision_data_{size}")
    if not os.path.isdir(data):
        generate(data, ("brick",), n_train=n_train, n_good=max(1, n_test // 3),
                 n_defect=n_test - max(1, n_test // 3), size=min(size, 512), seed=0)
    test_dir = os.path.join(data, "brick", "test")
    images = sorted(os.path.join(d, f) for d, _, fs in os.walk(test_dir) for f in fs)
    flat = os.path.join(work, f"precision_flat_{size}")
    if not os.path.isdir(flat):
        os.makedirs(flat)
        for i, f in enumerate(images):
            os.symlink(f, os.path.join(flat, f"{i:04d}.png"))
    rows = []
    for arch, k in configs:
        res = {}
        for p in precisions:
            save = os.path.join(work, f"precision_{arch}_{k}_{p}")
            run = os.path.join(save, f"ortho_{arch}_k{k}")
            t = time.perf_counter()
            _run([sys.executable, "train.py", "--data_path", data, "--category", "brick",
                  "--arch", arch, "--k", str(k), "--no-pretrained", "--precision", p,
                  "--save_path", save, "--eval", "--eval_PRO", "--overwrite"])
            row = next(csv.DictReader(open(os.path.join(run, "results.csv"))))
            meta = read_meta(os.path.join(run, "brick.safetensors"))
            setup = (meta.get("int8") or {}).get("calibration", {}).get("setup_seconds", 0.0)
            scores = {os.path.basename(os.path.dirname(r["path"])) + "/" +
                      os.path.basename(r["path"]): float(r["score"])
                      for r in csv.DictReader(open(os.path.join(run, "per_image_brick.csv")))}
            export = os.path.join(work, f"precision_export_{arch}_{k}_{p}")
            _run([sys.executable, "export_model.py", "--model_path",
                  os.path.join(run, "brick.safetensors"), "--save_dir", export, "--format",
                  "onnx"])
            res[p] = {"run_s": time.perf_counter() - t,
                      "fit_img_s": n_train / float(row["fit_seconds"]),
                      "setup_s": setup,
                      "fit_img_s_ex": n_train / (float(row["fit_seconds"]) - setup),
                      "eval_img_s": len(images) / float(row["eval_seconds"]),
                      "image_auroc": float(row["image_auroc"]),
                      "pixel_auroc": float(row["pixel_auroc"]), "au_pro": float(row["au_pro"]),
                      "scores": scores, "export": export, "infer_img_s": [], "engine_ms": []}
        for _ in range(2):                                   # alternate: drift cancels out
            for p in precisions:
                out = _run([sys.executable, "infer.py", "--model_file", res[p]["export"],
                            "--input_file", flat, "--save_path",
                            os.path.join(work, "precision_infer"), "--save_pic", "false",
                            "--batch_size", "8", "--cpu_threads", "2", "--enable_benchmark"])
                res[p]["infer_img_s"].append(float(re.search(r"([\d.]+) img/s", out).group(1)))
                res[p]["engine_ms"].append(_engine_ms(res[p]["export"], images))
        for p in precisions:
            r = res[p]
            r["infer_img_s"] = float(np.mean(r["infer_img_s"]))
            r["engine_ms"] = float(np.mean(r["engine_ms"]))
            ref = res[precisions[0]]
            changes = [abs(r["scores"][n] - ref["scores"][n]) / abs(ref["scores"][n])
                       for n in ref["scores"]]
            rows.append({"arch": arch, "k": k, "precision": p,
                         **{key: r[key] for key in ("fit_img_s", "setup_s", "fit_img_s_ex",
                                                    "eval_img_s", "infer_img_s",
                                                    "engine_ms", "image_auroc", "pixel_auroc",
                                                    "au_pro")},
                         "max_rel_score_change": max(changes),
                         "median_rel_score_change": float(np.median(changes)),
                         **{f"d_{m}": r[m] - ref[m] for m in ("image_auroc", "pixel_auroc",
                                                              "au_pro")},
                         **{f"x_{m}": r[m] / ref[m] for m in ("fit_img_s", "fit_img_s_ex",
                                                              "eval_img_s", "infer_img_s",
                                                              "engine_ms")}})
    return rows


def markdown(rows):
    lines = ["", "| arch | k | precision | fit img/s | int8 set-up s | fit img/s without it | "
             "eval img/s | infer.py b8 img/s | graph ms/img (b8) | image AUROC | pixel AUROC | "
             "AU-PRO | score change: median / largest |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x = "" if r["precision"] == "fp32" else " (x{:.2f})"
        lines.append(
            f"| {r['arch']} | {r['k']} | {r['precision']} | {r['fit_img_s']:.1f}"
            f"{x.format(r['x_fit_img_s'])} | {r['setup_s']:.1f} | {r['fit_img_s_ex']:.1f}"
            f"{x.format(r['x_fit_img_s_ex'])} | {r['eval_img_s']:.1f}{x.format(r['x_eval_img_s'])} "
            f"| {r['infer_img_s']:.1f}{x.format(r['x_infer_img_s'])} | {r['engine_ms']:.1f}"
            f"{x.format(1 / r['x_engine_ms'])} | "
            f"{r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['au_pro']:.4f} | "
            f"{100 * r['median_rel_score_change']:.1f}% / {100 * r['max_rel_score_change']:.1f}% |")
    lines += ["", "| arch | k | precision | image AUROC change | pixel AUROC change | AU-PRO change "
              "| within 0.005 / 0.005 / 0.01 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["precision"] != "fp32":
            d = [r["d_image_auroc"], r["d_pixel_auroc"], r["d_au_pro"]]
            ok = abs(d[0]) <= 0.005 and abs(d[1]) <= 0.005 and abs(d[2]) <= 0.01
            lines.append(f"| {r['arch']} | {r['k']} | {r['precision']} | {d[0]:+.4f} | "
                         f"{d[1]:+.4f} | {d[2]:+.4f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines)
