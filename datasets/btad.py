"""BTAD (beanTech Anomaly Detection), as downloaded:

    ROOT/<category>/train/ok/*.bmp|png
    ROOT/<category>/test/ok/*, test/ko/*
    ROOT/<category>/ground_truth/ko/<stem>.png|bmp      (same stem as the image, no suffix)

``ok`` images are normal (type 'good' in the tables), ``ko`` images anomalous (type 'ko').
"""
import os

from .mvtec import scan_labelled
from .samples import CategoryData, check_unique, list_images, warn_masks

NAME = "btad"
TREE = "ROOT/<category>/train/ok/, test/{ok,ko}/, ground_truth/ko/<stem>.png|bmp"


def is_category(folder):
    return os.path.isdir(os.path.join(folder, "train", "ok"))


def categories(root):
    return sorted(d for d in os.listdir(root) if is_category(os.path.join(root, d)))


def read(root, name, options=None):
    folder = os.path.join(root, name)
    train = list_images(os.path.join(folder, "train", "ok"))
    test, orphans = scan_labelled(os.path.join(folder, "test"),
                                  os.path.join(folder, "ground_truth"), normal="ok",
                                  mask_suffixes=("", "_mask"))
    check_unique(test, train)
    warn_masks(name, test, orphans)
    return CategoryData(name, NAME, folder, train, test=test,
                        test_dirs=[os.path.join(folder, "test")])
