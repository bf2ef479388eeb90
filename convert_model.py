"""Convert a format-1 model file (a pickle, <category>.pdparams) into the data-only format.

    python convert_model.py output/ortho_resnet18_k100/brick.pdparams

Run it once, on a file you trust. It reads the pickle with an unpickler that builds NumPy arrays
and plain containers only and refuses anything else, then writes <same name>.safetensors beside it
(or --out). Every other script refuses pickle-based model files.
"""
import os
import sys

from utils import ArgumentParser, run_cli  # first: quiets Paddle
from modelfile import MODEL_EXT, convert_legacy  # noqa: E402


def get_args(argv=None):
    p = ArgumentParser(description="Convert a format-1 (pickle) model file into the data-only "
                                   "model format.")
    p.add_argument("model", type=str, help="the format-1 .pdparams model file")
    p.add_argument("--out", type=str, default=None,
                   help=f"output file (default: the same path with {MODEL_EXT})")
    return p.parse_args(argv)


def main(args):
    dst = args.out or os.path.splitext(args.model)[0] + MODEL_EXT
    dst, meta = convert_legacy(args.model, dst)
    print(f"converted {args.model} ({meta.get('category')}, {meta.get('method')} "
          f"{meta.get('arch')} k={meta.get('k')}) -> {dst}")
    return dst


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args))
