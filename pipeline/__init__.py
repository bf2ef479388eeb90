"""What the scripts do, one responsibility per module; the scripts parse flags and print, the
maths lives in ``models/``, running a fitted model in ``orthoad_runtime``.

* a train.py run: ``training`` (checks, data, ranks, each category), ``fit`` (statistics,
  hold-out threshold), ``fit_patchcore`` (PatchCore's features, coreset and thresholds), ``int8`` (an int8 backbone's calibration and its cost against fp32),
  ``quantize`` (ONNX Runtime's static quantisation), ``update`` (new images into a model),
  ``distributed`` (ranks under paddle.distributed.launch), ``backbones`` (the frozen ResNet
  and its weights), ``geometry`` (input size, cells, batch caps);
* a fitted model: ``model`` (load, save, score), ``graphs`` (the embedding and scoring graphs
  per engine, cached), ``detectors`` (the runtime's Detector on a model file), ``export``
  (Paddle and ONNX exports), ``serving`` (serve.py's app with model files);
* evaluation: ``scoring`` (batches through the engine), ``evaluate`` (a test set's metrics),
  ``loco`` (MVTec LOCO's official metrics), ``submission`` (MVTec AD 2's server maps),
  ``calibration`` (thresholds on labelled images), ``results`` and ``tables`` (CSVs and
  printed tables), ``report`` (the HTML report).
"""
