"""The errors the runtime raises, each one line that names the problem and its fix."""


class UserError(Exception):
    """A problem with the user's input (a file, a flag, an image): reported as one line, exit
    status 2 in the scripts, no traceback."""


class ModelFileError(UserError):
    """A model or deploy file that fails its checks (schema.py, ``orthoad_runtime.schema``)."""


class TooManyPixels(UserError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""
