"""MVTec AD layout (also MPDD's, and the layout of any custom data set made that way):

    ROOT/<category>/train/good/*.png
    ROOT/<category>/test/good/*.png
    ROOT/<category>/test/<defect>/*.png
    ROOT/<category>/ground_truth/<defect>/<stem>_mask.png      (no masks for good; optional)

Samples are ordered by sorted defect folder, then sorted file name; label 0 = good, 1 = defect.
A defect image without a mask counts in the image metrics only.
"""
import os

from .samples import CategoryData, Sample, check_unique, list_images, stem, warn_masks

NAME = "mvtec"
TREE = ("ROOT/<category>/train/good/, test/good/, test/<defect>/, "
        "ground_truth/<defect>/<stem>_mask.png")

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush",
           "transistor", "zipper")
MVTEC_CATEGORIES = TEXTURES + OBJECTS
GROUPS = {"textures": TEXTURES, "objects": OBJECTS}


def is_category(folder):
    return os.path.isdir(os.path.join(folder, "train", "good"))


def match_masks(images, mask_folder, suffixes=("_mask",)):
    """{image path: mask path} for the masks of ``mask_folder`` named ``<stem><suffix>.*``, and
    the masks left without an image."""
    masks = {stem(m): m for m in list_images(mask_folder)}
    found = {}
    for p in images:
        for suffix in suffixes:
            m = masks.pop(stem(p) + suffix, None)
            if m is not None:
                found[p] = m
                break
    return found, list(masks.values())


def scan_labelled(folder, gt_dir, skip=(), split="test", normal="good", mask_suffixes=("_mask",),
                  mask_rule=None):
    """Samples of a labelled folder: ``folder/<normal>/*`` (label 0) and ``folder/<defect>/*``
    (label 1), sorted by defect folder then file name; masks from
    ``gt_dir/<defect>/<stem><suffix>.*`` where they exist.

    Returns:
        (samples, masks without an image).
    """
    extra = {} if mask_rule is None else {"mask_rule": mask_rule}
    samples, orphans = [], []
    for defect in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        sub = os.path.join(folder, defect)
        if not os.path.isdir(sub) or defect in skip:
            continue
        images = list_images(sub)
        if defect == normal:
            samples += [Sample(p, 0, "good", split=split) for p in images]
            continue
        masks, left = match_masks(images, os.path.join(gt_dir, defect), mask_suffixes)
        samples += [Sample(p, 1, defect, (masks[p],) if p in masks else (), split, **extra)
                    for p in images]
        orphans += left
    return samples, orphans


def categories(root):
    return sorted(d for d in os.listdir(root) if is_category(os.path.join(root, d)))


def read(root, name, options=None):
    folder = os.path.join(root, name)
    train = list_images(os.path.join(folder, "train", "good"))
    test, orphans = scan_labelled(os.path.join(folder, "test"),
                                  os.path.join(folder, "ground_truth"))
    check_unique(test, train)
    warn_masks(name, test, orphans)
    return CategoryData(name, NAME, folder, train, test=test,
                        test_dirs=[os.path.join(folder, "test")])
