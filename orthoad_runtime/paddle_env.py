"""What Paddle reads from the environment when it loads, set only when asked for."""
import os
import warnings


def configure_paddle():
    """Settings Paddle reads when it loads, for the process (call before importing Paddle; the
    repository's scripts do, the ONNX path never needs it): quiet C++ logs
    (GLOG_minloglevel=2), full float32 on NVIDIA GPUs (NVIDIA_TF32_OVERRIDE=0: the Mahalanobis
    distance of a k=300 embedding loses 3 digits with TF32), and no warning about a missing
    ccache. Values already set are kept."""
    warnings.filterwarnings("ignore", message="No ccache found")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
