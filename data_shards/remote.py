"""Helpers for shards read from object storage: which URLs are remote, how long to wait
before retrying one, and how to name one in a log message without its credentials."""

from __future__ import annotations

import functools
import importlib
import math
import re
from typing import Any

MAX_RETRY_WAIT = 30.0  # seconds

# ``scheme://user:password@host`` or ``scheme://token@host``; also with one slash, as
# ``str(Path(url))`` writes it (``https:/user:token@host/...``)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:/+)[^/\s@'\"]+@")
# ``name=value`` where the name looks like a secret: presigned S3/GCS query strings
# (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature), Azure SAS
# ``sig=``, ``token=``/``access_token=``, ``key=``, and environment assignments such as
# ``AWS_SECRET_ACCESS_KEY=...`` in ``pipe:`` commands
_SECRET_VALUE = re.compile(
    r"(?P<name>\b[\w.-]*(?:token|sig|signature|secret|credential|password|passwd|pwd|key|auth)"
    r"[\w.-]*=)[^&\s'\"]+",
    re.IGNORECASE,
)

# HTTP authorisation in a command's arguments or an error quoting them: webdataset's ``hf://``
# opener runs ``curl -H "Authorization:Bearer <HF token>"`` and its error for a failed read
# quotes those arguments; also ``Authorization: Basic ...`` and bare Hugging Face tokens
_AUTH_HEADER = re.compile(r"(?P<name>\b(?:proxy-)?authorization\s*:\s*(?:(?:bearer|basic|token)\s+)?)"
                          r"[^\s'\",\]]+", re.IGNORECASE)
_BEARER = re.compile(r"(?P<name>\bbearer\s+)[^\s'\",\]]+", re.IGNORECASE)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")  # user access tokens: hf_ + 34


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and URLs other than ``file://``: reads that can fail for a
    moment and succeed when tried again (a local file that fails is corrupt, not flaky)."""
    if url.startswith("pipe:"):
        return True
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() != "file"


def redact(text: str) -> str:
    """``text`` (a URL, a ``pipe:`` command or an error message quoting one) with user
    names, passwords, token-like parameter values, HTTP ``Authorization``/``Bearer`` values
    and Hugging Face tokens (``hf_...``) replaced by ``***``."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _AUTH_HEADER.sub(r"\g<name>***", text)
    text = _BEARER.sub(r"\g<name>***", text)
    text = _HF_TOKEN.sub("hf_***", text)
    return _SECRET_VALUE.sub(r"\g<name>***", text)


def holds_location(text: str) -> bool:
    """Whether ``text`` holds a URL or ``pipe:`` command that :func:`redact` should clean: a
    ``scheme://`` anywhere, a ``pipe:`` start, or ``scheme:/user@`` (a URL through ``Path``)."""
    return "://" in text or text.startswith("pipe:") or _USERINFO.search(text) is not None


def without_credentials(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, strings) with every string that holds a URL or
    ``pipe:`` command redacted (:func:`redact`); other strings and values unchanged. For what
    eofm writes to files (config.yaml, checkpoints, reports, results): ``https://user:token@``
    reads the data, but those files are copied and shared."""
    if isinstance(value, str):
        return redact(value) if holds_location(value) else value
    if isinstance(value, dict):
        return {k: without_credentials(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_credentials(v) for v in value)
    return value


# Errors of the HTTP/cloud clients fsspec may use that are not OSErrors but come from the
# network (requests' are OSErrors already): (module, class name), each used when installed.
_CLIENT_ERRORS = (("aiohttp", "ClientError"), ("botocore.exceptions", "BotoCoreError"),
                  ("fsspec.exceptions", "FSTimeoutError"), ("asyncio", "TimeoutError"))


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """What a remote read may raise that a retry can cure: ``OSError`` (connection resets,
    timeouts), ``EOFError`` and the installed network clients' own errors (aiohttp, botocore
    connection errors, fsspec timeouts). Looked up once, on the first remote failure."""
    found: list[type[BaseException]] = [OSError, EOFError]
    for module, name in _CLIENT_ERRORS:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def retry_delay(retry_wait: float, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first): exponential
    backoff ``retry_wait * 2**attempt``, at most :data:`MAX_RETRY_WAIT`."""
    return min(retry_wait * 2.0 ** min(attempt, 64), MAX_RETRY_WAIT)


def check_retry_options(retries: object, retry_wait: object) -> None:
    """Raise ValueError naming the option when ``retries``/``retry_wait`` are not usable."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an integer >= 0, got {retries!r}")
    if (isinstance(retry_wait, bool) or not isinstance(retry_wait, (int, float))
            or not math.isfinite(retry_wait) or retry_wait < 0):
        raise ValueError(f"retry_wait: expected a finite number of seconds >= 0, "
                         f"got {retry_wait!r}")
