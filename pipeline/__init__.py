"""What the scripts do, one responsibility per module: backbones, model, fit, evaluate, results,
export. The scripts parse flags and print; the maths lives in ``models/``."""
