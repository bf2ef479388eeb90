"""orthoad_runtime: run exported OrthoAD / PaDiM / PatchCore anomaly detectors (ONNX Runtime,
or Paddle Inference with the ``paddle`` extra) from any application, with no training code.

    import orthoad_runtime
    detector = orthoad_runtime.Detector.from_export("export/brick")
    for p in detector.predict(["a.png", "b.png"]):
        print(p.path, p.score, p.verdict, len(p.regions))

What it holds: the detector (``Detector``), the engines, the pre-processing, ignore masks, the
post-processing (maps at the image's size, masks, regions, prediction records), the deploy-file
schema, the figure, the HTTP service (``orthoad-serve``) and ``orthoad-infer``. Nothing here
fits a model or imports the repository's fitting code; importing it changes no environment
variable and imports no Paddle (``configure_paddle`` is the explicit step before Paddle loads).

Errors: ``UserError`` (one line naming the problem and the fix), ``ModelFileError`` (an export
that fails its checks), ``TooManyPixels`` (an image above the pixel limit).
"""
from .errors import ModelFileError, TooManyPixels, UserError
from .paddle_env import configure_paddle

__version__ = "1.0.0"
__all__ = ["Detector", "Prediction", "UserError", "ModelFileError", "TooManyPixels",
           "configure_paddle", "__version__"]


def __getattr__(name):                       # the heavier modules load when first asked for
    if name == "Detector":
        from .detector import Detector
        return Detector
    if name == "Prediction":
        from .predictions import Prediction
        return Prediction
    raise AttributeError(f"module 'orthoad_runtime' has no attribute '{name}'")
