"""Headless figures of anomaly maps (matplotlib, Agg backend).

Maps are always drawn on a fixed colour scale (vmin, vmax) stored in the model at fit time, so
colours are comparable across images; they are never min-max normalised per image.
"""

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils import atomic_path  # noqa: E402


def pixel_aspect(shape_hw, scored_hw):
    """matplotlib's ``aspect`` (a pixel's height over its width on screen) that draws an
    [H, W] network input or map at the aspect ratio of the image part it came from
    (``scored_hw``), not squashed to the input's."""
    if scored_hw is None:
        return 1.0
    (h, w), (sh, sw) = shape_hw, scored_hw
    return (sh * w) / float(h * sw)


def plot_result(path, image, amap, score, threshold=None, vmin=None, vmax=None, gt_mask=None,
                title="", pixel_threshold=None, scored_hw=None):
    """Write a PNG: input, [ground truth], heat map with colour bar, overlay with predicted mask.

    Args:
        image: uint8 [H, W, 3]; amap: float [H, W]; score: image score;
        threshold: image score threshold (None: no verdict);
        gt_mask: optional bool [H, W];
        pixel_threshold: map threshold of the predicted mask (default: ``threshold``).
        scored_hw: (height, width) of the original image's scored part: the panels have its
            aspect ratio (default: the input's).
    """
    panels = 3 + (gt_mask is not None)
    sh, sw = scored_hw or amap.shape
    aspect = min(3.0, max(0.33, sw / sh))                        # panel width / height
    pa = pixel_aspect(amap.shape, scored_hw)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * aspect * panels, 3.6))
    i = 0
    axes[i].imshow(image, aspect=pa)
    axes[i].set_title("image")
    if gt_mask is not None:
        i += 1
        axes[i].imshow(gt_mask, cmap="gray", vmin=0, vmax=1, aspect=pa)
        axes[i].set_title("ground truth")
    i += 1
    im = axes[i].imshow(amap, cmap="jet", vmin=vmin, vmax=vmax, aspect=pa)
    axes[i].set_title("anomaly map")
    fig.colorbar(im, ax=axes[i], fraction=0.046, pad=0.04)
    i += 1
    axes[i].imshow(image, aspect=pa)
    axes[i].imshow(amap, cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax, aspect=pa)
    pixel_threshold = threshold if pixel_threshold is None else pixel_threshold
    flagged = np.nan_to_num(amap, nan=-np.inf) > pixel_threshold \
        if pixel_threshold is not None else None
    if flagged is not None and flagged.any():
        axes[i].contour(flagged, levels=[0.5], colors="white", linewidths=1.2)
    if gt_mask is not None and gt_mask.any():
        axes[i].contour(gt_mask, levels=[0.5], colors="lime", linewidths=1.0)
    from orthoad_runtime.predictions import verdict as rule
    verdict = "" if threshold is None else (" " + rule(score, threshold).replace(
        "anomalous", "ANOMALOUS"))
    thr = "" if threshold is None else f" / thr {threshold:.2f}"
    axes[i].set_title(f"score {score:.2f}{thr}{verdict}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
