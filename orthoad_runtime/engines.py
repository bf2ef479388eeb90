"""The engines that run a model's exported graphs, behind one small interface.

* ``inference``: Paddle Inference (oneDNN on the CPU by default).
* ``onnxruntime``: ONNX Runtime on the graph converted by paddle2onnx.
* ``dygraph``: Paddle's eager mode on the model itself (``pipeline.graphs``): the oracle of the
  tests and the fallback; not a compiled graph, so not here.

A compiled graph is built once (``PaddleInferenceGraph`` / ``OnnxRuntimeGraph``) and then
``run(feeds)`` maps input names to arrays and returns the outputs in the graph's order. Nothing
here imports ``models/``: ``infer.py`` uses these classes on exported files alone.

Measured on this project's 2-core CPU machine (resnet18, k = 100, 256 px, batch 8, whole scoring
graph): ONNX Runtime 9.8 ms per image, Paddle Inference with oneDNN 14.9, dygraph backbone alone
about 90 at that time (see docs/performance.md). ``auto`` therefore takes ONNX Runtime on a CPU
when it is installed, then Paddle Inference; on a GPU, Paddle (dygraph) on the GPU.
"""
import logging
import os

import numpy as np

from .errors import UserError

logger = logging.getLogger(__name__)

ENGINES = ("auto", "dygraph", "inference", "onnxruntime")
INSTALL = {"onnxruntime": "pip install onnxruntime==1.32.0 paddle2onnx==2.1.0 (both are in "
                          "requirements.txt)"}


def _importable(name):
    import importlib
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def gpu_available():
    from .paddle_env import configure_paddle
    configure_paddle()
    import paddle
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def ort_gpu_available():
    """ONNX Runtime has its CUDA provider (onnxruntime-gpu) and Paddle sees a GPU."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and gpu_available()


def require(engine, convert=True):
    """UserError naming the package to install if ``engine`` cannot run here."""
    if engine == "onnxruntime":
        missing = [m for m in ("onnxruntime",) + (("paddle2onnx", "onnx") if convert else ())
                   if not _importable(m)]
        if missing:
            raise UserError(f"--engine onnxruntime needs the {' and '.join(missing)} "
                            f"package(s), which are not installed: {INSTALL['onnxruntime']}")
    elif engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}': choose one of {', '.join(ENGINES)}")


def resolve(engine):
    """The concrete engine of ``--engine`` on this machine (``auto``: the fastest installed)."""
    if engine != "auto":
        require(engine)
        return engine
    if gpu_available():
        return "dygraph"
    if all(_importable(m) for m in ("onnxruntime", "paddle2onnx", "onnx")):
        return "onnxruntime"
    logger.info("engine auto: ONNX Runtime is not installed (%s); using Paddle Inference",
                INSTALL["onnxruntime"])
    return "inference"


class PaddleInferenceGraph:
    """A Paddle Inference predictor on ``model_file`` (model.json / model.pdmodel) +
    ``params_file``.

    Large float32 inputs (a Gaussian fed to a run-time graph) are shared with the predictor
    rather than copied at every run where this Paddle supports it.
    """

    def __init__(self, model_file, params_file, threads=None, mkldnn=True, use_gpu=False):
        from .paddle_env import configure_paddle
        configure_paddle()                       # before Paddle loads (a line PC's process)
        from paddle import inference
        config = inference.Config(model_file, params_file)
        if use_gpu:
            if not gpu_available():
                raise UserError("--use_gpu=True but this Paddle build or machine has no GPU: "
                                "install paddlepaddle-gpu or pass --use_gpu=False")
            config.enable_use_gpu(512, 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(int(threads or os.cpu_count() or 1))
            config.enable_mkldnn() if mkldnn else config.disable_mkldnn()
        config.disable_glog_info()
        try:
            self.predictor = inference.create_predictor(config)
        except Exception as exc:
            raise UserError(f"Paddle Inference cannot load '{model_file}' "
                            f"({str(exc).strip().splitlines()[-1][:120]}): export it again "
                            "with this Paddle version") from None
        self.input_names = self.predictor.get_input_names()
        self.output_names = self.predictor.get_output_names()
        self.mkldnn = bool(mkldnn and not use_gpu)
        self.use_gpu = use_gpu
        self._shared, self._fixed = {}, {}

    def share(self, name, array):
        """Feed ``array`` to input ``name`` at every run: on the CPU without copying it (kept
        alive here); on a GPU copied to the device at each run."""
        if self.use_gpu:
            self._fixed[name] = np.ascontiguousarray(array)
            return
        import paddle
        tensor = paddle.utils.dlpack.from_dlpack(np.ascontiguousarray(array))
        self._shared[name] = (array, tensor)

    def run(self, feeds):
        for name in self.input_names:
            handle = self.predictor.get_input_handle(name)
            if name in self._shared:
                handle.share_external_data(self._shared[name][1])
                continue
            x = np.ascontiguousarray(self._fixed[name] if name in self._fixed else feeds[name])
            handle.reshape(list(x.shape))
            handle.copy_from_cpu(x)
        try:
            self.predictor.run()
        except Exception as exc:
            if self.mkldnn:
                import paddle
                raise UserError(f"oneDNN cannot run this graph with Paddle {paddle.__version__} "
                                f"({type(exc).__name__}: {str(exc).strip()[:100]}): pass "
                                "--enable_mkldnn=False") from None
            raise
        return [self.predictor.get_output_handle(n).copy_to_cpu() for n in self.output_names]


class OnnxRuntimeGraph:
    """An ONNX Runtime session on ``onnx_file`` (external data beside it is found by ORT)."""

    def __init__(self, onnx_file, threads=None, use_gpu=False):
        require("onnxruntime", convert=False)
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if use_gpu:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("--use_gpu=True but this ONNX Runtime has no CUDA provider: "
                                "install onnxruntime-gpu or pass --use_gpu=False")
            providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": 0}))
        try:
            self.session = ort.InferenceSession(onnx_file, options, providers=providers)
        except Exception as exc:
            raise UserError(f"ONNX Runtime cannot load '{onnx_file}' "
                            f"({str(exc).strip().splitlines()[-1][:120]}): export it again") \
                from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._ort = ort
        self._shared = {}

    def share(self, name, array):
        """Feed ``array`` to input ``name`` at every run without copying it."""
        self._shared[name] = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def run(self, feeds):
        values = dict(self._shared)
        for name in self.input_names:
            if name not in values:
                values[name] = self._ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(feeds[name]))
        outs = self.session.run_with_ort_values(self.output_names, values)
        return [o.numpy() for o in outs]


def map_and_score(outputs):
    """(maps [B, H, W], scores [B]) from a scoring graph's outputs, whatever their order."""
    amap = next(o for o in outputs if o.ndim == 4)
    score = next(o for o in outputs if o.ndim == 1)
    return amap[:, 0], score
