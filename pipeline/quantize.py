"""int8 backbones: post-training static quantisation of the embedding graph's convolutions with
ONNX Runtime's tools (QDQ format, per-channel int8 weights, uint8 activations: the u8 x s8
products that VNNI CPUs accumulate without saturation), calibrated on normal training images.
The projection, the Gaussian, the Mahalanobis distance and the map head stay float32.

The calibration's result is a small table of activation ranges (min, max per quantised tensor);
it is stored in the model file, so the identical int8 graph is rebuilt from the float32 one
anywhere, without the calibration images (``quantize_graph``).
"""
import logging
import os
import tempfile

import numpy as np

from utils import UserError

logger = logging.getLogger(__name__)

QUANTISED = "Conv (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges x 1.5)"
MIN_CALIBRATION = 4
# The calibration images are normal; a defect drives activations beyond their ranges, and
# clipping there would flatten exactly the responses that make the anomaly score. Measured on
# generated defects (random resnet18 and wide_resnet50_2, embedding error of the worst 1% of a
# defective image's patches): 21% / 18% with the bare ranges, 6% / 8% at 1.5x, 8% / 10% at 2x,
# for 3.4-4.5% -> 4.6-6.2% on normal images. So every range is widened by HEADROOM.
HEADROOM = 1.5


def _tools():
    """ONNX Runtime's quantisation API, as a dict (a one-line error where it is missing)."""
    try:
        from onnxruntime import quantization as q
        from onnxruntime.quantization import calibrate as c
        from onnxruntime.quantization import preprocess as p
    except ImportError as exc:
        raise UserError(f"int8 needs ONNX Runtime's quantisation tools ({exc}): pip install "
                        "onnxruntime==1.32.0 onnx") from None
    return {"CalibrationDataReader": q.CalibrationDataReader,
            "CalibrationMethod": q.CalibrationMethod, "QuantFormat": q.QuantFormat,
            "QuantType": q.QuantType, "quantize_static": q.quantize_static,
            "TensorData": c.TensorData, "TensorsData": c.TensorsData,
            "quant_pre_process": p.quant_pre_process,
            "load_tensors_data": c.load_tensors_data, "save_tensors_data": c.save_tensors_data}


def _prepared(src, work):
    """The graph with BatchNorm folded into the convolutions (ORT's pre-processing)."""
    t = _tools()
    out = os.path.join(work, "pre.onnx")
    t["quant_pre_process"](src, out, skip_symbolic_shape=True)
    return out


def _quantise(t, pre, dst, cache, reader=None, exclude=()):
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)         # ORT's quantiser advises on the root logger
    try:
        _quantise_loud(t, pre, dst, cache, reader, exclude)
    finally:
        logging.disable(level)


def _quantise_loud(t, pre, dst, cache, reader, exclude=()):
    t["quantize_static"](pre, dst, reader, quant_format=t["QuantFormat"].QDQ,
                         op_types_to_quantize=["Conv"], per_channel=True,
                         activation_type=t["QuantType"].QUInt8,
                         weight_type=t["QuantType"].QInt8,
                         calibrate_method=t["CalibrationMethod"].MinMax,
                         calibration_cache_path=cache, nodes_to_exclude=list(exclude))


def calibrate(src, batches):
    """Activation ranges of the float32 graph ``src`` (input 'image') over ``batches`` of
    normalised images [B, 3, H, W], widened by HEADROOM: {tensor name: [min, max]}."""
    t = _tools()

    class Reader(t["CalibrationDataReader"]):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"image": np.ascontiguousarray(x, np.float32)}

    with tempfile.TemporaryDirectory(prefix="orthoad.calib.") as work:
        pre = _prepared(src, work)
        cache = os.path.join(work, "ranges.json")
        _quantise(t, pre, os.path.join(work, "q.onnx"), cache, Reader())
        data = t["load_tensors_data"](cache)
    ranges = {}
    for name, d in sorted(data.data.items()):
        lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in d.range_value)
        ranges[name] = [lo * HEADROOM if lo < 0 else lo, hi * HEADROOM if hi > 0 else hi]
    return ranges


def quantize_graph(src, ranges, dst, fp32_nodes=()):
    """The int8 graph of the float32 graph ``src`` with the stored activation ``ranges``, the
    convolutions named in ``fp32_nodes`` left in float32."""
    t = _tools()
    with tempfile.TemporaryDirectory(prefix="orthoad.quant.") as work:
        pre = _prepared(src, work)
        tensors = {name: t["TensorData"](lowest=np.float32(lo), highest=np.float32(hi))
                   for name, (lo, hi) in ranges.items()}
        cache = os.path.join(work, "ranges.json")
        t["save_tensors_data"](t["TensorsData"](t["CalibrationMethod"].MinMax, tensors), cache)
        _quantise(t, pre, dst, cache, exclude=fp32_nodes)
    return dst


def conv_nodes(src):
    """The names of the convolutions the quantiser sees in ``src`` (after its
    pre-processing), in graph order."""
    import onnx
    with tempfile.TemporaryDirectory(prefix="orthoad.nodes.") as work:
        graph = onnx.load(_prepared(src, work)).graph
    return [n.name for n in graph.node if n.op_type == "Conv"]
