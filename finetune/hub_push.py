"""Publishing an export folder on the Hugging Face Hub: checking dataset ids and that a token
exists before any work (the token itself is never read into eofm or shown), and uploading with
huggingface_hub's ``HfApi`` so that ``--private`` never publishes to an existing public repo and
an unreachable Hub is one redacted error line naming the finished folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from eofm.data_shards.remote import redact

__all__ = ["check_dataset_ids", "check_hub_token", "push_folder"]

log = logging.getLogger(__name__)


def check_dataset_ids(ids: Sequence[str]) -> list[str]:
    """``ids`` as a list of Hub dataset repo ids ``ORG/NAME`` (duplicates dropped); a ValueError
    names each that is not one (e.g. a local folder name such as ``s2_64``)."""
    from huggingface_hub.utils import validate_repo_id

    if isinstance(ids, str):
        raise ValueError(f"dataset_ids: expected a list of Hub dataset ids, got the string "
                         f"{ids!r}; write [{ids!r}]")
    bad = []
    for name in ids:
        try:
            validate_repo_id(name)
        except ValueError:
            bad.append(name)
            continue
        if name.count("/") != 1:
            bad.append(name)
    if bad:
        raise ValueError(f"dataset_id: expected Hub dataset repo ids ORG/NAME (the Hub links "
                         f"them from the card), got {bad}")
    return list(dict.fromkeys(ids))


def _http_library_errors() -> tuple[type[BaseException], ...]:
    """The base classes of the errors of the HTTP library huggingface_hub uses: those its
    ``HfHubHTTPError`` derives from (httpx's ``HTTPError`` in huggingface_hub >= 1, the base of
    its transport errors like ``ConnectError``, which are no ``OSError``; requests'
    ``HTTPError`` and ``RequestException`` before)."""
    from huggingface_hub.utils import HfHubHTTPError

    return tuple(b for b in HfHubHTTPError.__mro__[1:] if b.__module__ != "builtins")


def check_hub_token(repo_id: str) -> None:
    """Refuse (a ValueError) a push to ``repo_id`` without a Hugging Face token (``HF_TOKEN``
    or a cached ``hf auth login``), before any work; the token itself is never shown."""
    from huggingface_hub import get_token

    try:
        token = get_token()
    except Exception as e:  # e.g. a failed OIDC exchange (HF_OIDC_RESOURCE): a plain Exception
        raise ValueError(f"push_to_hub: huggingface_hub could not get a token to upload to "
                         f"{repo_id!r} ({type(e).__name__}: {redact(str(e))}); nothing was "
                         "exported") from None
    if not token:
        raise ValueError(f"push_to_hub: expected a Hugging Face token with write access to "
                         f"{repo_id!r}, got none (HF_TOKEN is unset and no `hf auth login` is "
                         "cached); set HF_TOKEN or run `hf auth login`, then export again "
                         "(nothing was exported)")


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; the commit URL. Token: HF's own.

    ``private``: a new repo is created private, and an existing repo that is public is
    refused (a ValueError, nothing uploaded): ``create_repo(exist_ok=True)`` leaves an
    existing repo's visibility as it is. A Hub that cannot be reached (a transport error of
    huggingface_hub's HTTP library, which is no ``OSError``: :func:`_http_library_errors`) or
    that answers with an error is one ``OSError`` naming ``repo_id`` and ``folder`` (kept)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    api = HfApi()  # token from HF_TOKEN / the cached login, never passed through eofm
    try:
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if private:
            is_private = getattr(api.repo_info(repo_id, repo_type="model"), "private", None)
            if is_private is not True:
                what = "public" if is_private is False else "of unknown visibility"
                raise ValueError(f"push_to_hub: --private asks for a private repo, but "
                                 f"{repo_id!r} already exists and is {what}; nothing was "
                                 "uploaded (make it private on the Hub, or push without "
                                 "--private to publish)")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=f"eofm-export: {Path(folder).name}")
    except (OSError, *_http_library_errors()) as e:  # OSError: HfHubHTTPError, offline mode
        if isinstance(e, HfHubHTTPError):
            what = "the Hub refused the upload to"
        elif isinstance(e, (*_http_library_errors(), ConnectionError, TimeoutError)):
            what = "could not reach the Hub to upload to"
        else:
            what = "the upload failed for"
        raise OSError(f"push_to_hub: {what} {repo_id!r} ({type(e).__name__}: "
                      f"{redact(str(e))}); the export is complete in {folder}: upload that "
                      f"folder later (`hf upload {repo_id} {folder}`), no need to export "
                      "again") from e
    url = str(getattr(commit, "commit_url", None) or repo_url)
    log.info("uploaded %s to %s", folder, url)
    return url
