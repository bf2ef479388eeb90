"""MVTec AD folder layout (also the layout of any custom data set):

    ROOT/<category>/train/good/*.png
    ROOT/<category>/test/good/*.png
    ROOT/<category>/test/<defect>/*.png
    ROOT/<category>/ground_truth/<defect>/<stem>_mask.png      (no masks for good; optional)

Samples are ordered by sorted defect folder, then sorted file name; label 0 = good, 1 = defect.
A defect image without a mask counts in the image metrics only.
"""
import logging
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from utils import UserError
from .transforms import IMAGE_EXTENSIONS, load_mask, load_rgb

logger = logging.getLogger(__name__)

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush",
           "transistor", "zipper")
MVTEC_CATEGORIES = TEXTURES + OBJECTS


@dataclass
class Sample:
    path: str
    label: int            # 0 good, 1 defect
    defect: str           # 'good' or the defect folder name
    mask_path: str = None  # None for good images and defect images without a mask


def _images(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def _is_category(folder):
    return os.path.isdir(os.path.join(folder, "train", "good"))


def check_data_path(data_path):
    if not data_path or not os.path.isdir(data_path):
        raise UserError(f"--data_path '{data_path}' is not a folder: give the root that holds "
                        "the category folders (e.g. .../MVTec)")


def resolve_categories(data_path, category):
    """Expand 'all', 'textures', 'objects' or a folder name into category names."""
    check_data_path(data_path)
    found = sorted(d for d in os.listdir(data_path) if _is_category(os.path.join(data_path, d)))
    if category == "all":
        if not found:
            raise UserError(f"no category folder with train/good under '{data_path}': expected "
                            "ROOT/<category>/train/good/*.png")
        return found
    if category in ("textures", "objects"):
        group = TEXTURES if category == "textures" else OBJECTS
        names = [c for c in group if c in found]
        if not names:
            raise UserError(f"no MVTec {category} category ({', '.join(group)}) under "
                            f"'{data_path}': use --category all or a folder name")
        return names
    folder = os.path.join(data_path, category)
    if not os.path.isdir(folder):
        choices = ", ".join(found) if found else "none found"
        raise UserError(f"category '{category}' not found under '{data_path}' "
                        f"(available: {choices}): pass one of them, all, textures or objects")
    if not _is_category(folder):
        raise UserError(f"category folder '{folder}' has no train/good folder: expected "
                        f"{folder}/train/good/*.png")
    return [category]


class MVTecCategory:
    """File lists of one category, with the image / mask pairing checked.

    Args:
        data_path: the data set root.
        category: a folder name under data_path.
    """

    def __init__(self, data_path, category):
        self.root = os.path.join(data_path, category)
        self.category = category
        if not _is_category(self.root):
            raise UserError(f"category folder '{self.root}' has no train/good folder: expected "
                            f"{self.root}/train/good/*.png")

    def train_files(self, minimum=2):
        files = _images(os.path.join(self.root, "train", "good"))
        if len(files) < minimum:
            raise UserError(f"'{self.root}/train/good' holds {len(files)} image(s): at least "
                            f"{minimum} normal training image(s) are needed")
        return files

    def test_samples(self):
        """Sorted test samples with their masks (masks optional; see ``scan_labelled``)."""
        test_dir = os.path.join(self.root, "test")
        if not os.path.isdir(test_dir):
            raise UserError(f"'{test_dir}' does not exist: evaluation needs "
                            f"{test_dir}/<defect>/*.png (and good/)")
        samples = scan_labelled(test_dir, os.path.join(self.root, "ground_truth"))
        if not samples:
            raise UserError(f"'{test_dir}' holds no images: add test/good and test/<defect>")
        return samples


def scan_labelled(folder, gt_dir, skip=()):
    """Samples of a labelled folder: ``folder/good/*`` (label 0) and ``folder/<defect>/*``
    (label 1), sorted by defect folder then file name; masks from
    ``gt_dir/<defect>/<stem>_mask.*`` where they exist.

    A defect image without a mask is kept (its ``mask_path`` is None: image metrics only), and
    the count is logged; a mask without an image is ignored with a warning.
    """
    samples, missing, orphans = [], 0, []
    for defect in sorted(os.listdir(folder)):
        sub = os.path.join(folder, defect)
        if not os.path.isdir(sub) or defect in skip:
            continue
        images = _images(sub)
        if defect == "good":
            samples += [Sample(p, 0, "good") for p in images]
            continue
        mask_folder = os.path.join(gt_dir, defect)
        masks = {os.path.splitext(os.path.basename(m))[0]: m
                 for m in (_images(mask_folder) if os.path.isdir(mask_folder) else [])}
        for p in images:
            mask = masks.pop(f"{os.path.splitext(os.path.basename(p))[0]}_mask", None)
            missing += mask is None
            samples.append(Sample(p, 1, defect, mask))
        orphans += sorted(masks.values())
    n_defect = sum(s.label for s in samples)
    if missing:
        logger.warning("%d of the %d defect images in '%s' have no mask "
                       "(ground_truth/<defect>/<stem>_mask.png): they count in the image metrics "
                       "only; the pixel metrics use the %d with a mask and the normal images",
                       missing, n_defect, folder, n_defect - missing)
    if orphans:
        logger.warning("%d mask(s) in '%s' have no image (e.g. '%s'): ignored", len(orphans),
                       gt_dir, orphans[0])
    return samples


def load_test_item(sample, preprocess):
    """Sample -> (image [3, H, W] float32, mask [H, W] bool, original (H0, W0), mask uint8
    [H0, W0]); all-zero masks for good images and for defect images without a mask."""
    rgb = load_rgb(sample.path)
    if sample.mask_path is None:
        mask = np.zeros(rgb.shape[:2], dtype=np.uint8)
    else:
        mask = load_mask(sample.mask_path)
        if mask.shape != rgb.shape[:2]:
            raise UserError(f"mask '{sample.mask_path}' is {mask.shape[1]}x{mask.shape[0]} but "
                            f"its image is {rgb.shape[1]}x{rgb.shape[0]}: fix the mask")
    return preprocess.image(rgb), preprocess.mask(mask), rgb.shape[:2], mask


def decoding_threads():
    """Threads that decode and resize images: half the CPUs this process may use, 2 to 16 (a
    16-core GPU host decodes with 8, so that the GPU is not input-bound)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 2
    return min(16, max(2, cpus // 2))


def prefetch_batches(items, load, batch_size, workers=None, lookahead=2):
    """Yield lists of ``load(item)`` results, batch by batch, loaded by background threads
    (``decoding_threads`` by default).

    PIL decoding and resizing release the GIL, so loading overlaps the backbone's forward pass.
    At most ``lookahead`` batches wait in memory.
    """
    from concurrent.futures import ThreadPoolExecutor
    workers = workers or decoding_threads()
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    out = queue.Queue(maxsize=lookahead)
    stop = threading.Event()

    def producer(pool):
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                out.put(("ok", list(pool.map(load, chunk))))
        except BaseException as exc:  # forwarded to the consumer, re-raised there
            out.put(("error", exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        thread = threading.Thread(target=producer, args=(pool,), daemon=True)
        thread.start()
        try:
            for _ in chunks:
                kind, value = out.get()
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    out.get_nowait()
                except queue.Empty:
                    thread.join(0.05)
