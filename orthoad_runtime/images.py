"""PNG encodings of a prediction for the service and its page: the binary mask at the image's
resolution and a heat-map overlay (a jet colour scale on the model's fixed display range, never
normalised per image) at the network input. NumPy and PIL only (no matplotlib)."""
import base64
import io

import numpy as np
from PIL import Image


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(prediction):
    """The defect mask [H0, W0] as a 0 / 255 PNG (bytes)."""
    return _png(prediction.mask.astype(np.uint8) * 255)


def jet(values):
    """float [..] in [0, 1] -> uint8 RGB [.., 3] on the jet colour scale."""
    v = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    rgb = np.clip(1.5 - np.abs(v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255).round().astype(np.uint8)


def overlay_png(prediction, display=None, alpha=0.45):
    """The network input with the anomaly map over it (PNG bytes); ignored pixels are left
    uncoloured. ``display``: the model's {vmin, vmax}, else the map's own range."""
    amap = prediction.anomaly_map
    disp = display or {}
    lo, hi = disp.get("vmin"), disp.get("vmax")
    if lo is None or hi is None:
        lo, hi = float(np.nanmin(amap)), float(np.nanmax(amap))
    scaled = (np.nan_to_num(amap, nan=lo) - lo) / max(hi - lo, 1e-12)
    heat = jet(scaled).astype(np.float32)
    base = prediction.input_image.astype(np.float32)
    a = np.where(np.isnan(amap), 0.0, alpha)[..., None]
    return _png((base * (1 - a) + heat * a).round().astype(np.uint8))


def b64(data):
    return base64.b64encode(data).decode("ascii")
