"""Write generated images (``datasets.synthetic.Item``) in each data layout's tree, the way each
benchmark ships its files, and record every file written (``manifest.json``): the record the
readers' tests compare against. The pixels are the same in every layout (PNG or BMP, both
lossless; VisA's JPEG only when asked), so every layout must give the same metrics.

One writer per layout: ``write(out, category, index, items, image_format)`` -> manifest entries
{category, split, path, label, defect, masks}.
"""
import csv
import io
import json
import os

import numpy as np
from PIL import Image

from utils import atomic_path, write_json



def encode_image(array, tint):
    """float [H, W] (or [H, W, 3]) in 0..255 -> uint8 [H, W] (gray) or [H, W, 3] (tinted, or
    a colour photograph as it is)."""
    a = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if tint is not None:
        a = np.clip(np.round(a[:, :, None] * np.asarray(tint)), 0, 255).astype(np.uint8)
    return a


def _img(path, item, fmt="PNG"):
    with atomic_path(path) as tmp:
        Image.fromarray(encode_image(item.image, item.tint)).save(tmp, format=fmt)
    return path


def _mask(path, mask, value=255, fmt="PNG"):
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * np.uint8(value)).save(tmp, format=fmt)
    return path


def _entry(item, split, path, defect, masks=(), label=None):
    return {"category": item.category, "split": split, "path": os.path.abspath(path),
            "label": item.label if label is None else label, "defect": defect,
            "masks": [os.path.abspath(m) for m in masks]}


def _labelled(items):
    return [it for it in items if it.split in ("train", "test")]


class _MVTec:
    NAME, N_VALIDATION, N_PRIVATE = "mvtec", 0, 0

    @staticmethod
    def write(out, cat, ci, items, image_format):
        root, entries = os.path.join(out, cat), []
        for it in _labelled(items):
            if it.split == "train":
                p = _img(os.path.join(root, "train", "good", f"{it.index:03d}.png"), it)
                entries.append(_entry(it, "train", p, "good"))
            elif it.label == 0:
                p = _img(os.path.join(root, "test", "good", f"{it.index:03d}.png"), it)
                entries.append(_entry(it, "test", p, "good"))
            else:
                p = _img(os.path.join(root, "test", it.kind, f"{it.index:03d}.png"), it)
                m = _mask(os.path.join(root, "ground_truth", it.kind, f"{it.index:03d}_mask.png"),
                          it.mask)
                entries.append(_entry(it, "test", p, it.kind, [m]))
        return entries


class _VisA:
    """Raw VisA: one Normal and one Anomaly folder per object, masks with small non-zero values
    (1-3), and split_csv/1cls.csv (rows appended object by object)."""
    NAME, N_VALIDATION, N_PRIVATE = "visa", 0, 0

    @staticmethod
    def write(out, cat, ci, items, image_format):
        ext, fmt = (".JPG", "JPEG") if image_format == "jpg" else (".png", "PNG")
        data = os.path.join(out, cat, "Data")
        entries, rows, n_normal, n_anomaly = [], [], 0, 0
        for it in _labelled(items):
            if it.label == 0:
                rel = os.path.join(cat, "Data", "Images", "Normal", f"{n_normal:04d}{ext}")
                n_normal += 1
                _img(os.path.join(out, rel), it, fmt)
                rows.append([cat, it.split, "normal", rel, ""])
                entries.append(_entry(it, it.split, os.path.join(out, rel), "good"))
            else:
                rel = os.path.join(cat, "Data", "Images", "Anomaly", f"{n_anomaly:03d}{ext}")
                mrel = os.path.join(cat, "Data", "Masks", "Anomaly", f"{n_anomaly:03d}.png")
                _img(os.path.join(out, rel), it, fmt)
                _mask(os.path.join(out, mrel), it.mask, value=1 + n_anomaly % 3)
                n_anomaly += 1
                rows.append([cat, "test", "anomaly", rel, mrel])
                entries.append(_entry(it, "test", os.path.join(out, rel), "anomaly",
                                      [os.path.join(out, mrel)]))
        os.makedirs(data, exist_ok=True)
        csv_path = os.path.join(out, "split_csv", "1cls.csv")
        old = []
        if os.path.isfile(csv_path):                # other objects written before this one
            with open(csv_path, newline="", encoding="utf-8") as fh:
                old = [r for r in list(csv.reader(fh))[1:] if r and r[0] != cat]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(old + rows)
        os.makedirs(os.path.dirname(csv_path), exist_ok=True)
        with atomic_path(csv_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
        return entries


AD2_VARIANTS = ("regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3")


class _MVTecAD2:
    """MVTec AD 2 as it ships: <NNN>_<variant>.png with the lighting and shift variants in the
    labelled sets, good/ and bad/ each numbered from 000 (the same stems in both), masks
    <stem>_mask.png, the private sets <NNN>_regular.png and <NNN>_mixed.png."""
    NAME, N_VALIDATION, N_PRIVATE = "mvtec_ad2", 5, 4

    @staticmethod
    def write(out, cat, ci, items, image_format):
        root, entries = os.path.join(out, cat), []
        n_bad = n_private = 0
        for it in items:
            if it.split == "train":
                p = _img(os.path.join(root, "train", "good", f"{it.index:03d}_regular.png"), it)
                entries.append(_entry(it, "train", p, "good"))
            elif it.split == "validation":
                p = _img(os.path.join(root, "validation", "good", f"{it.index:03d}_regular.png"),
                         it)
                entries.append(_entry(it, "validation", p, "good"))
            elif it.split == "test" and it.label == 0:
                stem = f"{it.index:03d}_{AD2_VARIANTS[it.index % len(AD2_VARIANTS)]}"
                p = _img(os.path.join(root, "test_public", "good", f"{stem}.png"), it)
                entries.append(_entry(it, "test", p, "good"))
            elif it.split == "test":
                stem = f"{n_bad:03d}_{AD2_VARIANTS[n_bad % len(AD2_VARIANTS)]}"
                p = _img(os.path.join(root, "test_public", "bad", f"{stem}.png"), it)
                m = _mask(os.path.join(root, "test_public", "ground_truth", "bad",
                                       f"{stem}_mask.png"), it.mask)
                n_bad += 1
                entries.append(_entry(it, "test", p, "bad", [m]))
            else:                          # unlabelled: alternately the two private test sets
                split, suffix = ("test_private", "regular") if n_private % 2 == 0 else \
                    ("test_private_mixed", "mixed")
                p = _img(os.path.join(root, split, f"{n_private // 2:03d}_{suffix}.png"), it)
                n_private += 1
                entries.append(_entry(it, split, p, None, label=None))
        return entries


LOCO_TYPES = {"scratch": "logical_anomalies", "blob": "structural_anomalies",
              "patch": "structural_anomalies"}
LOCO_DEFECTS = [  # pixel value per demo defect kind, with saturation as MVTec LOCO defines it
    {"defect_name": "scratch", "pixel_value": 255, "saturation_threshold": 0.5,
     "relative_saturation": True},
    {"defect_name": "blob", "pixel_value": 254, "saturation_threshold": 150,
     "relative_saturation": False},
    {"defect_name": "patch", "pixel_value": 253, "saturation_threshold": 1.0,
     "relative_saturation": True},
]


def split_channels(mask):
    """A defect mask -> MVTec LOCO's ground-truth files for it, their union the mask: its middle
    third of columns and its outer thirds (one file whose defect has two disconnected parts),
    or the mask alone if it is too narrow to cut."""
    cols = np.flatnonzero(mask.any(axis=0))
    if len(cols) < 3:
        return [mask]
    a, b = cols[len(cols) // 3], cols[2 * len(cols) // 3]
    middle, outer = mask.copy(), mask.copy()
    middle[:, :a] = False
    middle[:, b:] = False
    outer[:, a:b] = False
    return [m for m in (middle, outer) if m.any()]


class _MVTecLOCO:
    NAME, N_VALIDATION, N_PRIVATE = "mvtec_loco", 5, 0

    @staticmethod
    def write(out, cat, ci, items, image_format):
        root, entries = os.path.join(out, cat), []
        values = {d["defect_name"]: d["pixel_value"] for d in LOCO_DEFECTS}
        counters = {}
        for it in items:
            if it.split == "private":
                continue
            if it.label == 0:
                split = {"train": "train", "validation": "validation", "test": "test"}[it.split]
                p = _img(os.path.join(root, split, "good", f"{it.index:03d}.png"), it)
                entries.append(_entry(it, it.split, p, "good"))
                continue
            kind = LOCO_TYPES[it.kind]
            n = counters.get(kind, 0)
            counters[kind] = n + 1
            p = _img(os.path.join(root, "test", kind, f"{n:03d}.png"), it)
            channels = split_channels(it.mask) if n % 2 else [it.mask]
            masks = [_mask(os.path.join(root, "ground_truth", kind, f"{n:03d}", f"{j:03d}.png"),
                           m, values[it.kind]) for j, m in enumerate(channels)]
            entries.append(_entry(it, "test", p, kind, masks))
        write_json(os.path.join(root, "defects_config.json"), LOCO_DEFECTS)
        return entries


BTAD_FORMATS = [(".bmp", "BMP", ".png", "PNG"),   # product 01: .bmp images, .png masks
                (".png", "PNG", ".png", "PNG"),   # product 02
                (".bmp", "BMP", ".bmp", "BMP")]   # product 03: .bmp masks too


class _BTAD:
    """BTAD as it ships: the n-th category written with product 01's, 02's or 03's file types
    (n mod 3); masks named as their images, without a suffix."""
    NAME, N_VALIDATION, N_PRIVATE = "btad", 0, 0

    @staticmethod
    def write(out, cat, ci, items, image_format):
        root, entries = os.path.join(out, cat), []
        ext, fmt, mext, mfmt = BTAD_FORMATS[ci % 3]
        n_ko = 0
        for it in _labelled(items):
            if it.split == "train":
                p = _img(os.path.join(root, "train", "ok", f"{it.index:04d}{ext}"), it, fmt)
                entries.append(_entry(it, "train", p, "good"))
            elif it.label == 0:
                p = _img(os.path.join(root, "test", "ok", f"{it.index:04d}{ext}"), it, fmt)
                entries.append(_entry(it, "test", p, "good"))
            else:
                p = _img(os.path.join(root, "test", "ko", f"{n_ko:04d}{ext}"), it, fmt)
                m = _mask(os.path.join(root, "ground_truth", "ko", f"{n_ko:04d}{mext}"), it.mask,
                          fmt=mfmt)
                n_ko += 1
                entries.append(_entry(it, "test", p, "ko", [m]))
        return entries


class _Folder:
    """Plain folders per category: good/ (training), test_good/, one folder per defect type and
    masks/<type>/<stem>_mask.png; the manifest names the flags that read them."""
    NAME, N_VALIDATION, N_PRIVATE = "folder", 0, 0

    @staticmethod
    def write(out, cat, ci, items, image_format):
        root, entries = os.path.join(out, cat), []
        for it in _labelled(items):
            if it.split == "train":
                p = _img(os.path.join(root, "good", f"{it.index:03d}.png"), it)
                entries.append(_entry(it, "train", p, "good"))
            elif it.label == 0:
                p = _img(os.path.join(root, "test_good", f"{it.index:03d}.png"), it)
                entries.append(_entry(it, "test", p, "good"))
            else:
                p = _img(os.path.join(root, it.kind, f"{it.index:03d}.png"), it)
                m = _mask(os.path.join(root, "masks", it.kind, f"{it.index:03d}_mask.png"),
                          it.mask)
                entries.append(_entry(it, "test", p, it.kind, [m]))
        return entries


def folder_flags(out, category):
    """The flags that read the plain folders of ``category`` written by ``_Folder``."""
    root = os.path.join(out, category)
    kinds = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and
                   d not in ("good", "test_good", "masks"))
    return ["--data_format", "folder", "--category", category,
            "--normal_dir", os.path.join(root, "good"),
            "--normal_test_dir", os.path.join(root, "test_good"),
            "--abnormal_dir", *[os.path.join(root, k) for k in kinds],
            "--mask_dir", os.path.join(root, "masks")]


WRITERS = {w.NAME: w for w in (_MVTec, _VisA, _MVTecAD2, _MVTecLOCO, _BTAD, _Folder)}


def write_manifest(out, layout, entries):
    """``manifest.json``: the layout and every file written (merged with an earlier manifest of
    the same layout, so categories can be added in several calls)."""
    path = os.path.join(out, "manifest.json")
    old = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            prev = json.load(fh)
        if prev.get("layout") == layout:
            cats = {e["category"] for e in entries}
            old = [e for e in prev.get("files", []) if e["category"] not in cats]
    write_json(path, {"layout": layout, "files": old + entries})
    return path


def read_manifest(out):
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)
