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
# ``str(Path(url))`` writes it (``https:/user:token@host/...``). The user part runs to the
# LAST ``@`` before the first ``/`` (a password may hold a raw ``@``: ``alice:p@ss@host``);
# an ``@`` after it is the path's (``hf://datasets/org/name@main/...``) and is kept. Or, for
# a password holding a raw ``/`` (an AWS secret key pasted unencoded:
# ``s3://AKIA...:wJal/rXU@bucket/...``), when the part before the first ``/`` reads as
# ``name:`` and no port (``host:8443/`` is a host), to the last ``@`` of the word (what
# follows the password may be cut with it: never the password). A scheme starts at no letter
# (the run of letters it is part of starts the same match): one try per run, not per letter.
_USERINFO = re.compile(r"(?<![A-Za-z])(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:/+)"
                       r"(?:[^/\s'\"]+@|[^/\s'\"@:\[]+:(?!:|\d*(?:/|$))[^\s'\"]*@)")
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

# One shell word: a quoted string, or unquoted characters and quoted parts up to whitespace
# (``alice:'p w'`` is one word); in a Python list's repr (an error quoting a command's
# arguments) each argument is a quoted string of its own
_WORD = r"""(?:'[^']*'|"[^"]*"|(?:[^\s'"]|'[^']*'|"[^"]*")+)"""
# A command-line option whose argument is a secret, and that argument: curl's ``-u``/``--user``
# and ``-U``/``--proxy-user`` (``user:password``; also ``-su``, ``-ualice:pw``),
# ``--oauth2-bearer``, ``--pass``, ``--proxy-pass``, ``--tlspassword``, ``--cookie``/``-b``;
# wget's ``--password``, ``--http-password``, ``--proxy-password``, ``--ftp-password``; and any
# long option named for a token, secret, password, API key or credential (rclone's
# ``--s3-secret-access-key``, ``--hf-token``), but not wget's ``--ask-password``/``--no-...``
# flags, which take no argument. The argument follows after ``=``, whitespace, or, in a list's
# repr, ``', '`` (tried first: ``'-u', 'alice:pw'``), or directly after ``-u``/``-U``.
_SECRET_OPTION = re.compile(
    r"(?P<name>(?<![\w-])(?:(?:-[A-Za-z]*[uU]|-b|--(?:user|proxy-user|oauth2-bearer|pass"
    r"|proxy-pass|cookie|(?!ask-|no-)[\w-]*(?:token|secret|passw|api-?key|credential)[\w-]*))"
    r"(?:=|\s+|['\"],\s*)"
    r"|-[uU](?=[^\s,=])))"  # attached: -ualice:pw
    rf"(?P<value>{_WORD})")
# An HTTP header whose name looks secret (``Authorization``, ``Proxy-Authorization``,
# ``Cookie``, ``X-Api-Key``, ``X-Auth-Token``, ``PRIVATE-TOKEN``, ``X-Amz-Security-Token``,
# ``Ocp-Apim-Subscription-Key``, ...) as ``curl -H``/``wget --header`` take it: its value,
# after an auth scheme word (``Bearer``), which stays. Quoted (``-H 'X-Api-Key: v w'``), the
# value runs to the closing quote; unquoted (``-H X-Api-Key:v``), to the end of the word.
_HEADER_NAME = (r"(?:[\w-]*(?:token|secret|passw|cookie|credential|api-?key"
                r"|authori[sz]ation|signature)[\w-]*"
                r"|(?:[\w-]*[-_])?(?:key|auth|sig|pwd)(?:[-_][\w-]*)?)"
                r"\s*:\s*(?:(?:bearer|basic|token|digest|negotiate)\s+)?")
_QUOTED_HEADER = re.compile(rf"(?P<name>(?P<q>['\"]){_HEADER_NAME})(?:(?!(?P=q)).)+",
                            re.IGNORECASE)
_UNQUOTED_HEADER = re.compile(rf"(?P<name>(?<![^\s=\[,(]){_HEADER_NAME})[^\s'\"]+",
                              re.IGNORECASE)
# where an input of a comma-separated list (``data.path: "/a/s1, pipe:curl ..."``) is a
# ``pipe:`` command
_PIPE_INPUT = re.compile(r"(?:^|,)\s*pipe:")


def is_remote(url: str) -> bool:
    """True for ``pipe:`` commands and URLs other than ``file://``: reads that can fail for a
    moment and succeed when tried again (a local file that fails is corrupt, not flaky)."""
    if url.startswith("pipe:"):
        return True
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() != "file"


def redact(text: str) -> str:
    """``text`` (a URL, a ``pipe:`` command or an error message quoting one) with its
    credentials replaced by ``***``: a URL's ``user:password@`` (to the last ``@`` before the
    host; also with a raw ``/`` in the password), the argument of ``-u``/``--user``/
    ``--proxy-user`` and other secret-taking options, the values of secret-named HTTP headers
    (``Authorization``, ``Cookie``, ``X-Api-Key``, ``*-Token``), ``Bearer`` values, Hugging
    Face tokens (``hf_...``) and token-like ``name=value`` parameters. Host, path, bucket and
    other arguments stay readable; a secret in a form none of these knows (``FOO=bar cmd``,
    an unknown flag) is not found."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _SECRET_OPTION.sub(_hidden_argument, text)
    text = _QUOTED_HEADER.sub(r"\g<name>***", text)
    text = _UNQUOTED_HEADER.sub(r"\g<name>***", text)
    text = _AUTH_HEADER.sub(r"\g<name>***", text)
    text = _BEARER.sub(r"\g<name>***", text)
    text = _HF_TOKEN.sub("hf_***", text)
    return _SECRET_VALUE.sub(r"\g<name>***", text)


def _hidden_argument(match: re.Match[str]) -> str:
    """A secret option's match with its argument ``***``, quoted as the argument was."""
    value = match["value"]
    quote = value[0] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else ""
    return f"{match['name']}{quote}***{quote}"


def holds_location(text: str) -> bool:
    """Whether ``text`` holds a URL or ``pipe:`` command that :func:`redact` should clean: a
    ``scheme://`` anywhere, a ``pipe:`` command (alone or as an input of a comma-separated
    list), or ``scheme:/user@`` (a URL through ``Path``)."""
    return ("://" in text or _PIPE_INPUT.search(text) is not None
            or _USERINFO.search(text) is not None)


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
