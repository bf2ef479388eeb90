"""Access control of the service: bearer keys from a file (``serve.py --api_key_file``).

The file holds one key a line (blank lines and lines starting with # are ignored). It is read
again when it changes (checked at most once a second), so keys are added and revoked without a
restart; a file that disappears or holds no key any more lets no request in (fail closed).
A request is let in when its ``Authorization: Bearer <key>`` header matches one of the keys,
compared in constant time (``hmac.compare_digest`` against every key, no early exit). Keys are
never logged.
"""
import hmac
import logging
import os
import threading
import time

from .errors import UserError

logger = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16


def _read(path):
    with open(path, encoding="utf-8") as fh:
        keys = [line.strip() for line in fh]
    return [k.encode("utf-8") for k in keys if k and not k.startswith("#")]


class ApiKeys:
    """The keys of ``path`` (see the module docstring).

    Raises:
        UserError: at start, if the file cannot be read, holds no key, or a key is shorter
            than ``MIN_KEY_LENGTH`` characters.
    """

    def __init__(self, path, check_every_s=1.0):
        self.path, self.check_every_s = path, check_every_s
        try:
            keys = _read(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--api_key_file '{path}' cannot be read ({type(exc).__name__}): "
                            "give a text file with one key a line") from None
        if not keys:
            raise UserError(f"--api_key_file '{path}' holds no key: write one key a line "
                            f"(at least {MIN_KEY_LENGTH} characters, e.g. from "
                            "'python -c \"import secrets; print(secrets.token_urlsafe(32))\"')")
        short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
        if short:
            raise UserError(f"--api_key_file '{path}' holds {len(short)} key(s) shorter than "
                            f"{MIN_KEY_LENGTH} characters: use long random keys")
        self._keys, self._sig = keys, self._signature()
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        logger.info("access: %d API key(s) from %s", len(keys), path)

    def _signature(self):
        try:
            st = os.stat(self.path)
            return st.st_size, st.st_mtime_ns, st.st_ino
        except OSError:
            return None

    def _refresh(self):
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        with self._lock:
            self._checked = now
            sig = self._signature()
            if sig == self._sig:
                return
            self._sig = sig
            try:
                keys = [k for k in _read(self.path) if len(k) >= MIN_KEY_LENGTH]
            except (OSError, UnicodeDecodeError):
                keys = []
            if not keys:
                logger.error("access: %s is gone or holds no usable key: no request is let in "
                             "until it holds one", self.path)
            else:
                logger.info("access: %s changed: %d API key(s)", self.path, len(keys))
            self._keys = keys

    def allows(self, authorization):
        """True if the ``Authorization`` header value carries one of the keys."""
        self._refresh()
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        given = given.strip().encode("utf-8")
        match = False
        for key in self._keys:                      # every key compared: no early exit
            match |= hmac.compare_digest(given, key)
        return match
