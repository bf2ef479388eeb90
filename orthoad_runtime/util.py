"""Helpers the runtime shares with the repository's scripts: strict command lines with one-line
errors, logging, atomic file writes (a full disk or a killed process leaves the previous file),
CSV logs, file digests. No model code, no Paddle."""
import argparse
import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time

from .errors import UserError

_TRUE = ("true", "yes", "1", "y", "t")
_FALSE = ("false", "no", "0", "n", "f")
STALE_TEMP_SECONDS = 600        # temporary files older than this were left by a killed process
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit status 2), no prefix matching of flags, and
    boolean flags (``add_bool``) written ``--flag``, ``--flag=True``, ``--flag=false`` or
    ``--flag true``.

    A bare boolean flag never takes the next word as its value unless that word is true/false
    (yes/no, 1/0), so ``predict.py --save_pic image.png`` keeps the image path as the input.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self._bool_flags = set()

    def add_bool(self, name, default, help):
        """Add a boolean flag ``name`` (see the class docstring for the accepted forms)."""
        self.add_argument(name, type=str2bool, default=default, metavar="BOOL", help=help)
        self._bool_flags.add(name)

    def add_renamed(self, old, new):
        """Accept ``old`` as a former name of the flag ``new`` (defined before): its value goes
        to ``new`` with a warning that names the new flag; hidden from --help."""
        target = next(a for a in self._actions if new in a.option_strings)

        class Renamed(argparse.Action):
            def __call__(self, parser, namespace, values, option_string=None):
                logging.getLogger("cli").warning(
                    "%s is now called %s: the old name is accepted until the next release",
                    old, new)
                setattr(namespace, target.dest, values)
        self.add_argument(old, dest=target.dest, action=Renamed, type=target.type,
                          default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add_not_needed(self, flags, why):
        """Flags other scripts have that this one does not need: given, a one-line error that
        says why (instead of argparse's 'unrecognized arguments'); hidden from --help."""
        prog = self.prog

        class NotNeeded(argparse.Action):
            def __call__(self, parser, namespace, values, option_string=None):
                parser.error(f"{option_string} is not needed by {prog}: {why}; leave it out")
        for flag in flags:
            self.add_argument(flag, nargs="?", action=NotNeeded, default=argparse.SUPPRESS,
                              help=argparse.SUPPRESS)

    def parse_args(self, args=None, namespace=None):
        args = self._explicit_bools(sys.argv[1:] if args is None else list(args))
        parsed = super().parse_args(args, namespace)
        parsed.explicit = self._given(args)
        return parsed

    def _given(self, argv):
        """The destinations of the options written on the command line (not left at their
        default): flags that contradict a model file are then told apart from defaults."""
        by_flag = {s: a.dest for a in self._actions for s in a.option_strings}
        given = set()
        for word in argv:
            if word == "--":
                break
            flag = word.split("=", 1)[0]
            if flag in by_flag:
                given.add(by_flag[flag])
        return given

    def _explicit_bools(self, argv):
        """Rewrite ``--flag`` and ``--flag VALUE`` of boolean flags as ``--flag=VALUE``."""
        out, i = [], 0
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                return out + argv[i:]
            if arg in self._bool_flags:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                if nxt is not None and _is_bool_word(nxt):
                    out.append(f"{arg}={nxt}")
                    i += 2
                    continue
                arg = f"{arg}=True"
            out.append(arg)
            i += 1
        return out

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _is_bool_word(value):
    return str(value).strip().lower() in _TRUE + _FALSE


def str2bool(value):
    """Parse true/false, yes/no, 1/0 (any case) for flags written as --flag=True."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def positive_int(value):
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{value}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def run_cli(main, get_args, argv=None):
    """Run a script's ``main(get_args(argv))`` with the project's error contract.

    UserError -> one line on stderr and exit 2; Ctrl-C -> one line and exit 130.
    """
    args = get_args(argv)
    setup_logging()
    prog = os.path.basename(sys.argv[0])
    try:
        main(args)
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted by the user; finished results were kept\n")
        return 130
    return 0


def setup_logging(level=logging.INFO):
    # Paddle installs its own root handler at import; ours replaces it so that every line of a
    # run has one format
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    # Paddle's download helper logs every retry at INFO; our own message says what failed.
    logging.getLogger("paddle.utils.download").setLevel(logging.ERROR)


def write_failed(path, exc):
    """A one-line UserError for an OSError while writing ``path`` (full disk, no permission)."""
    fix = "free space on that disk or write elsewhere" if exc.errno in _NO_SPACE else \
        "check the folder's permissions or write elsewhere"
    return UserError(f"cannot write '{path}' ({exc.strerror or exc}): {fix}; any earlier version "
                     "of the file is intact")


def _remove_stale_temps(folder, name):
    """Remove the temporary files of ``name`` that a killed process left in ``folder``."""
    now = time.time()
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(f".{name}.") and e.name.endswith(".tmp") and \
                        now - e.stat().st_mtime > STALE_TEMP_SECONDS:
                    os.remove(e.path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the destination folder; rename it to ``path`` on success.

    A crash, a kill or a full disk leaves the previous file at ``path`` untouched and no partial
    file under it; an OSError while writing becomes a one-line UserError naming the file.
    Temporary files a killed process left behind are removed by a later write of the same file.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    ensure_dir(folder)
    _remove_stale_temps(folder, os.path.basename(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    except OSError as exc:
        raise write_failed(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_dir(folder):
    """Create ``folder`` or raise a UserError naming it if that is impossible."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder '{folder}' ({exc.strerror}): choose a "
                        "writable location") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder '{folder}' is not writable: choose a writable location")
    return folder


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _csv_cells(row, columns):
    return [f"{v:.6f}" if isinstance(v, float) else ("" if v is None else str(v))
            for v in (row.get(c, "") for c in columns)]


def write_csv(path, rows, columns):
    """Write dict rows as CSV (atomic; the csv module quotes commas, quotes and newlines in
    values); floats with 6 decimals, missing values empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(_csv_cells(row, columns) for row in rows)
    write_text(path, buf.getvalue())


class CsvLog:
    """A CSV written row by row as work goes (flushed each row) to ``<path>.partial``, renamed to
    ``path`` by ``close``: a crash keeps the rows done so far in the .partial file and leaves any
    earlier ``path`` intact."""

    def __init__(self, path, columns):
        self.path, self.columns = path, columns
        self.partial = path + ".partial"
        ensure_dir(os.path.dirname(os.path.abspath(path)))
        try:
            self._fh = open(self.partial, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh, lineterminator="\n")
            self._writer.writerow(columns)
            self._fh.flush()
        except OSError as exc:
            raise write_failed(self.partial, exc) from None

    def add(self, row):
        try:
            self._writer.writerow(_csv_cells(row, self.columns))
            self._fh.flush()
        except OSError as exc:
            raise write_failed(self.partial, exc) from None

    def close(self):
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        return self.path


def sha256_file(path, block=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def is_pickle(path):
    """True if the file starts like a Python pickle (protocol 2 or later)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
