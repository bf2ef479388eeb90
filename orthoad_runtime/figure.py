"""The figure of one prediction (predict.py, infer.py ``--save_pic``), drawn with PIL: the input,
the anomaly map with its colour bar, and the overlay with the predicted mask's outline, under a
line with the score, the threshold and the verdict. Colours use the model's fixed display range
(never normalised per image). No matplotlib: a line PC's cold start stays short (matplotlib's
import and rendering cost about 0.35 s a process here)."""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import jet

PANEL = 256          # each panel's height in pixels (wider for wide images)


def display_range(meta, amap):
    """(vmin, vmax) of the colour scale: the model's fixed one, else the map's own range."""
    disp = meta.get("display") or {}
    if disp.get("vmin") is not None and disp.get("vmax") is not None:
        return disp["vmin"], disp["vmax"]
    return float(np.nanmin(amap)), float(np.nanmax(amap))


def _eroded(mask, steps):
    """Binary erosion with a 3 x 3 cross, ``steps`` times (NumPy; outside counts as False)."""
    m = mask.copy()
    for _ in range(steps):
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        inner[0, :] = inner[-1, :] = False
        inner[:, 0] = inner[:, -1] = False
        m = inner
    return m


def _panel(array, size, resample=Image.BILINEAR):
    return Image.fromarray(array).resize(size, resample)


def prediction_figure(prediction, meta, name=""):
    """A PIL image: input | anomaly map + colour bar | overlay with the mask's outline."""
    amap = prediction.anomaly_map
    h, w = amap.shape
    sh, sw = prediction.scored_hw or (h, w)                  # as the image is, not the input
    size = (max(1, round(PANEL * min(4.0, max(0.25, sw / sh)))), PANEL)
    vmin, vmax = display_range(meta, amap)
    scaled = (np.nan_to_num(amap, nan=vmin) - vmin) / max(vmax - vmin, 1e-12)
    heat = jet(scaled)
    heat[np.isnan(amap)] = 128                                       # ignored: grey
    image = prediction.input_image if prediction.input_image is not None else \
        np.zeros((h, w, 3), np.uint8)
    alpha = np.where(np.isnan(amap), 0.0, 0.45)[..., None]
    overlay = (image * (1 - alpha) + heat * alpha).round().astype(np.uint8)
    t = prediction.pixel_threshold
    if t is not None:
        inside = np.nan_to_num(amap, nan=-np.inf) > t
        overlay[inside & ~_eroded(inside, max(1, h // 128))] = 255     # the mask's outline
    gap, bar, top = 8, 14, 26
    width = 3 * size[0] + 4 * gap
    fig = Image.new("RGB", (width, top + size[1] + bar + 26), "white")
    for i, panel in enumerate((image, heat, overlay)):
        fig.paste(_panel(panel, size), (gap + i * (size[0] + gap), top))
    ramp = jet(np.linspace(0, 1, size[0])[None, :].repeat(bar, axis=0))
    x0 = 2 * gap + size[0]
    fig.paste(Image.fromarray(ramp), (x0, top + size[1] + 4))
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default(size=13)
    verdict = prediction.verdict.upper() if prediction.verdict == "anomalous" else \
        prediction.verdict
    thr = "" if prediction.image_threshold is None else \
        f" / threshold {prediction.image_threshold:.4g}"
    draw.text((gap, 6), f"{name}   score {prediction.score:.4g}{thr}   {verdict}   "
                        f"{len(prediction.regions)} region(s)", fill="black", font=font)
    y = top + size[1] + bar + 6
    draw.text((x0, y), f"{vmin:.3g}", fill="black", font=font)
    label = f"{vmax:.3g}"
    draw.text((x0 + size[0] - draw.textlength(label, font=font), y), label, fill="black",
              font=font)
    return fig


def save_prediction_figure(path, prediction, meta, name=""):
    from .util import atomic_path
    with atomic_path(path) as tmp:
        prediction_figure(prediction, meta, name).save(tmp, format="PNG")
    return path
