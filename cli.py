"""Command-line flags shared by the scripts, and their checks.

Each script builds its parser from these groups, so one flag means the same thing everywhere.
"""
import os
import sys

from models.archs import CHANNELS as ARCHS, feature_dim
from models.projection import PROJECTIONS
from orthoad_runtime.prediction_args import check_precision
from utils import UserError, positive_int

METHODS = sorted(PROJECTIONS) + ["patchcore"]


def add_data_args(parser):
    """Where the data is and in which layout (see ``datasets.layouts``)."""
    from datasets.layouts import FORMATS
    parser.add_argument("--data_path", type=str, default=None,
                        help="data set root (every layout but folder)")
    parser.add_argument("--data_format", type=str, default="auto", choices=list(FORMATS),
                        help="layout of the data: auto (recognised from the files, logged), "
                             "mvtec, visa (raw, split_csv/1cls.csv), mvtec_ad2, mvtec_loco, "
                             "btad, or folder (plain folders: --normal_dir ...)")
    parser.add_argument("--normal_dir", type=str, default=None,
                        help="folder layout: normal training images")
    parser.add_argument("--abnormal_dir", type=str, nargs="+", default=None, metavar="DIR",
                        help="folder layout: anomalous test images, one folder per defect type, "
                             "named after the folder, or TYPE=DIR to name it (folders that "
                             "share a name, e.g. every one called Imgs, need TYPE=)")
    parser.add_argument("--normal_test_dir", type=str, default=None,
                        help="folder layout: normal test images")
    parser.add_argument("--normal_split", type=float, default=None,
                        help="folder layout, instead of --normal_test_dir: share of --normal_dir "
                             "held out for testing (seeded by --seed, recorded in the model)")
    parser.add_argument("--mask_dir", type=str, default=None,
                        help="folder layout: masks matched by file stem (with or without a "
                             "_mask suffix), in sub-folders named by type or flat")


def add_model_args(parser, fitting):
    """Flags that identify a model (and, when ``fitting``, how to fit it)."""
    parser.add_argument("--method", type=str, default="ortho", choices=METHODS,
                        help="ortho: semi-orthogonal projection (OrthoAD); sample: random "
                             "channel subset (PaDiM); patchcore: memory bank of patch features "
                             "(PatchCore, docs/patchcore.md)")
    parser.add_argument("--arch", type=str, default="resnet18", choices=sorted(ARCHS),
                        help="backbone")
    parser.add_argument("--k", type=int, default=100,
                        help="projected dimension (ortho, sample)")
    parser.add_argument("--coreset_ratio", type=float, default=0.1,
                        help="patchcore: share of the training patches kept in the memory bank "
                             "by greedy coreset selection (the paper's 10 %%; 0.01 selects about "
                             "8x and scores 2-5x faster)")
    parser.add_argument("--save_path", type=str, default="./output",
                        help="root of the model folders <method>_<arch>_k<k>/ (patchcore: "
                             "patchcore_<arch>_c<coreset percent>/)")
    if fitting:
        parser.add_argument("--patchcore_dim", type=positive_int, default=1024,
                            help="patchcore: dimension D of the patch features (layer2 + layer3 "
                                 "averaged down to it; at most their channels: 384 for "
                                 "resnet18, 1536 for wide_resnet50_2)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the projection, the "
                            "hold-out split and random backbone weights")
        parser.add_argument("--input_size", type=str, nargs="+", default=["auto"],
                            metavar="SIZE",
                            help="auto (square training images: resize 256 + centre crop 256; "
                                 "otherwise whole images resized to an H x W of about 256^2 "
                                 "pixels with their aspect ratio), S, or H W (whole images "
                                 "resized to it; multiples of 16)")
        parser.add_argument("--resize", type=int, default=None,
                            help="classic geometry: shorter side after resize (default 256)")
        parser.add_argument("--crop_size", type=int, default=None,
                            help="classic geometry: centre crop side (default: --resize; PaDiM: "
                                 "256 / 224)")
        parser.add_argument("--stats_device", type=str, default="auto",
                            choices=["auto", "cpu", "device"],
                            help="where the float64 sums and inverses are computed: auto (on "
                                 "the GPU when Paddle runs there, else the CPU's BLAS / LAPACK "
                                 "on every core), cpu, or device (Paddle ops)")
        parser.add_renamed("--stats", "--stats_device")   # until the next release
        parser.add_argument("--ignore_mask", type=str, default=None,
                            help="PNG of the pixels never to score (white = ignore: serial "
                                 "numbers, fixtures, labels), at the images' or the input's "
                                 "size; stored with the model")
        parser.add_bool("--save_sums", False, "also store the float64 sums in the model file "
                        "so that train.py --update can add images later (4096 * k(k+1)/2 * 8 "
                        "bytes at 256 px: 165 MB at k=100, 1.48 GB at k=300)")
        parser.add_bool("--update", False, "fold the normal training images of the data given "
                        "(--data_path's train/good, or --normal_dir) into the existing model "
                        "(fitted with --save_sums), exactly; images already in it are skipped, "
                        "its test, validation and calibration images refused")
        parser.add_argument("--cell", type=str, default="auto",
                            help="side of the blocks of patch positions that share one Gaussian: "
                                 "auto (1, or the smallest that keeps the statistics under 4.5 GB "
                                 "at high resolution; a rectangle where no square divides the "
                                 "grid), N, or HxW")
        parser.add_argument("--eps", type=float, default=0.01, help="covariance ridge")
        parser.add_argument("--holdout", type=float, default=0.1,
                            help="fraction of train/good (at most 32 images) held out to "
                                 "learn the threshold, then added to the statistics; 0 disables "
                                 "the threshold")
        parser.add_bool("--pretrained", True, "Paddle's ImageNet weights (downloaded on first "
                        "use); --no-pretrained or --pretrained=False: seeded random weights "
                        "(tests)")
    else:
        parser.add_bool("--pretrained", None, "not needed: the model file says which weights "
                        "its backbone has (ImageNet, a file, or random with a seed); given, it "
                        "must agree with the file")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="same as --pretrained=False")
    parser.add_argument("--weights", type=str, default=None,
                        help="local backbone weights (.pdparams state dict or .safetensors) "
                             "instead of downloading")


def add_precision_args(parser, fitting):
    """``--precision``: the backbone's number format (int8: quantised on VNNI CPUs)."""
    if fitting:
        parser.add_argument("--precision", type=str, default="fp32", choices=["fp32", "int8"],
                            help="int8: fit with the backbone quantised to int8 (ONNX Runtime; "
                                 "calibrated on normal training images), so that its statistics "
                                 "and thresholds belong to the int8 graph that will run")
        parser.add_argument("--calibration_images", type=positive_int, default=None,
                            help="with --precision int8: normal training images the "
                                 "quantisation is calibrated on (default: up to 32)")
        parser.add_argument("--int8_max_change", type=float, default=0.1,
                            help="with --precision int8: a float32 model is fitted beside it "
                                 "and both score the normal images the threshold is learned "
                                 "on; int8 is refused if their scores change by more than this "
                                 "(median, relative) (docs/engines.md)")
    else:
        parser.add_argument("--precision", type=str, default="auto",
                            choices=["auto", "fp32", "int8"],
                            help="the model's own (auto), or fp32 / int8, which must be the "
                                 "model's: an int8 model's thresholds belong to its int8 graph")


def add_run_args(parser):
    """Flags of the scripts that run the backbone over many images."""
    parser.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--cpu_threads", type=positive_int, default=None,
                        help="CPU threads for the backbone and the statistics (default: every "
                             "CPU this process may use)")
    parser.add_argument("--engine", type=str, default="auto",
                        choices=["auto", "dygraph", "inference", "onnxruntime"],
                        help="what runs the backbone and the scoring graph: auto (the fastest "
                             "installed: ONNX Runtime, then Paddle Inference on a CPU; Paddle on "
                             "a GPU), dygraph, inference (Paddle Inference, oneDNN) or "
                             "onnxruntime")


def add_eval_args(parser):
    parser.add_bool("--eval_PRO", False, "also compute the official AU-PRO (FPR limit 0.3)")
    parser.add_bool("--non_partial_AUC", False,
                    "also report PRO and ROC by the OrthoAD paper's own protocol (labelled "
                    "paper_*)")
    parser.add_bool("--save_pic", False, "write a figure per test image")
    parser.add_argument("--save_maps", type=str, default=None,
                        help="write each labelled test image's map, float32 .tiff at the "
                             "original resolution, under this folder as MVTec's AD and LOCO "
                             "evaluations read them (<category>/test/<defect>/<stem>.tiff)")
    parser.add_argument("--save_server_maps", type=str, default=None,
                        help="MVTec AD 2: write the maps of the unlabelled test_private and "
                             "test_private_mixed images under this folder exactly as MVTec's "
                             "upload checker accepts them (anomaly_images[_thresholded]/"
                             "<object>/<set>/<stem>, float16 .tiff and 0 / 255 .png at the "
                             "pixel threshold)")
    parser.add_argument("--eval_size", type=str, default="input", choices=["input", "original"],
                        help="compute the metrics at the network input size or on maps resized "
                             "to each image's original size (official protocol)")
    parser.add_bool("--report", False, "write report.html: metrics, ROC / PRO curves, score "
                    "histograms with the threshold, worst false positives and negatives")


def add_distributed_args(parser):
    parser.add_argument("--shard", type=str, default="auto",
                        choices=["auto", "images", "categories"],
                        help="under paddle.distributed.launch: split each category's images "
                             "over the ranks (images) or give each rank whole categories "
                             "(categories); auto: categories when there are at least as many "
                             "as ranks (measured faster: no rank waits while another finalises)")


def add_calibration_args(parser):
    parser.add_argument("--calibration_dir", type=str, default=None,
                        help="labelled images that set the thresholds: DIR/good/, DIR/<defect>/, "
                             "masks optional in DIR/ground_truth/<defect>/<stem>_mask.png (or "
                             "DIR/<category>/... for several categories); never test images")
    parser.add_argument("--calibration_normal_dir", type=str, default=None,
                        help="instead of --calibration_dir, plain folders: normal calibration "
                             "images")
    parser.add_argument("--calibration_abnormal_dir", type=str, nargs="+", default=None,
                        metavar="DIR", help="anomalous calibration images, one folder per "
                                            "defect type")
    parser.add_argument("--calibration_mask_dir", type=str, default=None,
                        help="masks of the anomalous calibration images, matched by stem (with "
                             "or without _mask), by type or flat")
    parser.add_argument("--threshold_target", type=str, default="f1",
                        help="with --calibration_dir: f1 (best F1) or fpr=F (at most a share F of "
                             "the normal images rejected, e.g. fpr=0.01)")


def check_common(args):
    seed = getattr(args, "seed", 0)
    if not 0 <= seed <= 2 ** 32 - 1:
        raise UserError(f"--seed {seed} is out of range: use 0 .. 4294967295")
    explicit = getattr(args, "explicit", set())
    if args.method == "patchcore":
        _check_patchcore(args)
    elif {"coreset_ratio", "patchcore_dim"} & explicit:
        flag = sorted({"coreset_ratio", "patchcore_dim"} & explicit)[0]
        raise UserError(f"--{flag} belongs to --method patchcore, not {args.method}: leave it "
                        "out, or pass --method patchcore")
    elif args.k < 1:
        raise UserError(f"--k {args.k} is out of range: it must be at least 1")
    elif args.arch in ARCHS and args.k > feature_dim(args.arch):
        raise UserError(f"--k {args.k} is larger than the feature dimension "
                        f"{feature_dim(args.arch)} of {args.arch}: choose --k <= "
                        f"{feature_dim(args.arch)}")
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch_size {args.batch_size} must be at least 1")


PATCHCORE_REFUSES = {"k": "--k is the projected dimension of ortho and sample; PatchCore's is "
                          "--patchcore_dim",
                     "cell": "--cell groups positions of a Gaussian; PatchCore has none",
                     "eps": "--eps is the covariance ridge; PatchCore has no covariance",
                     "save_sums": "--save_sums stores a Gaussian's sums; PatchCore has none",
                     "stats_device": "--stats_device places the Gaussian's statistics; PatchCore "
                                     "has none"}


def _check_patchcore(args):
    if not 0 < args.coreset_ratio <= 1:
        raise UserError(f"--coreset_ratio {args.coreset_ratio} is out of range: give a share in "
                        "(0, 1], e.g. 0.1 (the paper) or 0.01")
    for key, why in PATCHCORE_REFUSES.items():
        if key in getattr(args, "explicit", set()) and getattr(args, key, None) is not False:
            raise UserError(f"{why}: leave --{key} out with --method patchcore")


def apply_threads(args):
    """Use ``--cpu_threads`` (default: every CPU this process may use, shared among the ranks of
    a distributed launch on this machine) for Paddle's CPU kernels and the per-position
    statistics loops; return the number."""
    import paddle

    from models import linalg
    from pipeline.distributed import local_size
    threads = getattr(args, "cpu_threads", None)
    if threads is None and local_size() > 1:          # ranks of a launch share the machine
        threads = max(1, linalg.n_threads() // local_size())
    linalg.set_threads(threads)
    paddle.base.core.set_num_threads(linalg.n_threads())
    return linalg.n_threads()


def run_info(args, weights_source, engine=None):
    """Facts about a run for the report's header."""
    info = {"command": " ".join(os.path.basename(a) if i == 0 else a
                                for i, a in enumerate(sys.argv)),
            "method / arch / k": f"{args.method} / {args.arch} / coreset "
                                 f"{100 * args.coreset_ratio:g} %" if args.method == "patchcore"
                                 else f"{args.method} / {args.arch} / {args.k}",
            "backbone weights": weights_source}
    if engine:
        info["engine"] = engine
    if getattr(args, "eval_size", None):
        info["metrics at"] = "the network input size" if args.eval_size == "input" else \
            "each image's original size"
    return info


MODEL_FLAGS = ("method", "arch", "k", "coreset_ratio", "resize", "crop_size", "category")


def run_folder(args):
    """``<save_path>/<method>_<arch>_k<k>/`` (PatchCore: ``patchcore_<arch>_c<percent>/``)."""
    from utils import run_dir
    return run_dir(args.save_path, args.method, args.arch, args.k, args.coreset_ratio)


def category_model(args, category):
    """The model file of ``category`` in ``run_folder(args)``."""
    from utils import model_path
    return model_path(args.save_path, args.method, args.arch, args.k, category,
                      args.coreset_ratio)


def model_file(args, verb):
    """The model file a script works on: ``--model_path``, or ``--category`` under
    ``--save_path`` in ``<method>_<arch>_k<k>/``."""
    if getattr(args, "model_path", None):
        return args.model_path
    if not getattr(args, "category", None):
        raise UserError(f"say which model to {verb}: --model_path FILE or --category NAME "
                        "(with --save_path, --method, --arch, --k)")
    return category_model(args, args.category)


def _meta_value(meta, key):
    if key == "coreset_ratio":
        return (meta.get("patchcore") or {}).get("coreset_ratio")
    return meta.get(key)


def _names_folder(key, method):
    """Whether ``key`` is part of the run folder's name for ``method``."""
    return key in ("method", "arch") + (("coreset_ratio",) if method == "patchcore" else ("k",))


def check_model_flags(args, meta, path):
    """The same rule in every script that opens a model: the file says what it is. A derived
    path must match ``--method/--arch/--k`` (they name its folder); with ``--model_path``, a
    model flag written on the command line that contradicts the file is an error (flags left
    at their defaults are not looked at)."""
    explicit = getattr(args, "explicit", set())
    pretrained = getattr(args, "pretrained", None)
    random = str(meta.get("weights_source", "")).startswith("random:")
    if pretrained is not None and pretrained == random:
        raise UserError(f"--{'pretrained' if pretrained else 'no-pretrained'} contradicts the "
                        f"model file '{path}' (fitted with {meta.get('weights_source')} "
                        "weights): leave it out, the file says which weights its backbone has")
    patchcore = meta.get("method") == "patchcore"
    for key in MODEL_FLAGS:
        if not hasattr(args, key) or getattr(args, key) is None:
            continue
        if (key == "k" and patchcore) or (key == "coreset_ratio" and not patchcore):
            continue                         # not a property of this method's models
        by_path = bool(getattr(args, "model_path", None))
        if key == "category" and not by_path:
            continue                         # a derived path: the category named the file
        given = key in explicit or (not by_path and _names_folder(key, args.method))
        if given and _meta_value(meta, key) != getattr(args, key):
            raise UserError(f"--{key} {getattr(args, key)} contradicts the model file '{path}' "
                            f"({key}={_meta_value(meta, key)}): leave --{key} out (the file "
                            "says what it is) or open another model")


def open_model(args, verb):
    """The model a script works on (see ``model_file`` and ``check_model_flags``), on
    ``--engine`` if the script has one.

    Returns:
        (``pipeline.model.Model``, its path).
    """
    from pipeline import model as models_io
    path = model_file(args, verb)
    threads = apply_threads(args)
    model = models_io.load(path, None, args.weights)
    check_model_flags(args, model.meta, path)
    check_precision(getattr(args, "precision", None), model.precision, f"model '{path}'")
    if getattr(args, "engine", None):
        model.use_engine(args.engine, None, threads)
    return model, path


def open_detector(args, verb="use"):
    """The ``orthoad_runtime.detector.Detector`` of a model file (``model_file``), on ``--engine``.

    Returns:
        (Detector, its path).
    """
    from modelfile import read_meta
    from pipeline.detectors import from_model_file
    path = model_file(args, verb)
    meta = read_meta(path) if os.path.isfile(path) else {}
    check_model_flags(args, meta, path)
    check_precision(getattr(args, "precision", None), meta.get("precision", "fp32"),
                    f"model '{path}'")
    threads = apply_threads(args)
    return from_model_file(path, engine=args.engine, threads=threads, weights=args.weights), path
