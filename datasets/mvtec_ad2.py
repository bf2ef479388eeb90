"""MVTec AD 2:

    ROOT/<object>/train/good/*.png                      fitted whole (no hold-out)
    ROOT/<object>/validation/good/*.png                 sets the threshold (normal images only)
    ROOT/<object>/test_public/good/*.png, bad/*.png     the labelled evaluation set
    ROOT/<object>/test_public/ground_truth/bad/<stem>_mask.png
    ROOT/<object>/test_private/*.png                    no labels: maps for the evaluation server
    ROOT/<object>/test_private_mixed/*.png              no labels: maps for the evaluation server

The benchmark's rule is that no anomalous image may set the threshold, so it is learned on
``validation/good``. ``test_private`` and ``test_private_mixed`` have no ground truth: the
evaluation writes their maps in the form the MVTec AD 2 evaluation server accepts
(``pipeline/submission.py``).
"""
import logging
import os

from .mvtec import scan_labelled
from .samples import CategoryData, check_unique, list_images, warn_masks

logger = logging.getLogger(__name__)

NAME = "mvtec_ad2"
TREE = ("ROOT/<object>/train/good/, validation/good/, test_public/{good,bad}/, "
        "test_public/ground_truth/bad/<stem>_mask.png, test_private/, test_private_mixed/")
PRIVATE = ("test_private", "test_private_mixed")


def is_category(folder):
    return os.path.isdir(os.path.join(folder, "train", "good")) and \
        os.path.isdir(os.path.join(folder, "test_public"))


def categories(root):
    return sorted(d for d in os.listdir(root) if is_category(os.path.join(root, d)))


def read(root, name, options=None):
    folder = os.path.join(root, name)
    public = os.path.join(folder, "test_public")
    train = list_images(os.path.join(folder, "train", "good"))
    validation = list_images(os.path.join(folder, "validation", "good"))
    if not validation:
        logger.warning("%s: no validation/good images: the threshold falls back to a hold-out "
                       "of train/good", name)
    test, orphans = scan_labelled(public, os.path.join(public, "ground_truth"),
                                  skip=("ground_truth",))
    unlabelled = {s: list_images(os.path.join(folder, s)) for s in PRIVATE}
    unlabelled = {s: paths for s, paths in unlabelled.items() if paths}
    check_unique(test, train, validation)
    warn_masks(name, test, orphans)
    return CategoryData(name, NAME, folder, train, validation, test, unlabelled,
                        test_dirs=[public] + [os.path.join(folder, s) for s in PRIVATE])
