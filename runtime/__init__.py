"""What runs a fitted model, apart from what fits and evaluates one (``pipeline/``): the engines,
the detector object that scripts, the service and user code call, the per-image results, and
the HTTP service. The ONNX path (an ``export_model.py --format onnx`` folder) imports neither
Paddle nor ``models/``: a line PC needs only ``requirements-deploy.txt``."""
