"""The Hugging Face Hub's licence identifiers, for a model card's ``license`` metadata.

The Hub accepts a fixed list of ids (https://huggingface.co/docs/hub/repositories-licenses);
a licence that is not on it is declared as ``license: other`` with a ``license_name`` (and a
``license_link`` to its text, or a LICENSE file in the repo). :data:`HUB_LICENSES` is eofm's
copy of that list. The Hub adds ids now and then, so an id missing here is reported, never
refused: :func:`license_notes` says what to check and what was probably meant.
"""

from __future__ import annotations

import re

__all__ = ["HUB_LICENSES", "LICENSES_URL", "check_license_terms", "license_notes",
           "listed_spelling"]

LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"

HUB_LICENSES: frozenset[str] = frozenset((
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0",
    "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0",
    "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "llama2", "gemma", "unknown", "other",
))


def _bare(licence: str) -> str:
    """``licence`` without case, separators or a trailing ``.0``: ``Apache 2``, ``apache2``
    and ``apache-2.0`` are one id written three ways (``cc-by-sa-2.0`` and ``cc-by-nc-2.0``
    stay two licences, as a similarity measure would not keep them)."""
    return re.sub(r"[-_.\s]", "", re.sub(r"(\.0)+$", "", licence.lower()))


def listed_spelling(licence: str) -> str | None:
    """The id of :data:`HUB_LICENSES` that ``licence`` writes another way (``APACHE2``,
    ``Apache 2.0`` -> ``apache-2.0``), or None."""
    same = sorted(k for k in HUB_LICENSES if _bare(k) == _bare(licence))
    return same[0] if same else None


def check_license_terms(license: str, name: object = None, link: object = None
                        ) -> tuple[str | None, str | None]:
    """``(license_name, license_link)`` of a card, checked: both only with ``license`` ``other``
    (the Hub reads them only then), the name an id like ``my-license-1.0``, the link an http(s)
    URL of the licence's text (an export holds no LICENSE file a relative link could name); else a
    ValueError naming the field, what was expected and what came."""
    given = {k: v for k, v in (("license_name", name), ("license_link", link)) if v is not None}
    if given and license != "other":
        raise ValueError(f"{', '.join(given)}: only with license 'other' (the Hub reads them "
                         f"only then), got license {license!r}")
    if "license_name" in given and not (isinstance(name, str)
                                        and re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name.strip())):
        raise ValueError(f"license_name: expected an id for the licence like 'my-license-1.0' "
                         f"(lowercase letters, digits, '.', '_', '-': what the Hub's card "
                         f"template asks for), got {name!r}")
    if "license_link" in given and not (isinstance(link, str)
                                        and re.fullmatch(r"https?://[^\s/]+\S*", link.strip())):
        raise ValueError(f"license_link: expected an http(s) URL of the licence's text, got "
                         f"{link!r}")
    return (None if name is None else str(name).strip(),
            None if link is None else str(link).strip())


def license_notes(license: str, license_name: str | None = None,
                  license_link: str | None = None) -> list[str]:
    """What a publisher should know about a card's licence fields (empty when nothing): an id
    not on :data:`HUB_LICENSES` (with the listed id written another way, ``apache2`` for
    ``apache-2.0``: named, never applied for the user), or ``other`` without a name or a
    link to its text."""
    notes = []
    if license not in HUB_LICENSES:
        same = listed_spelling(license)
        meant = f" (the Hub writes it {same!r})" if same else ""
        notes.append(f"license: {license!r} is not on the Hub's licence list ({LICENSES_URL}, "
                     f"as eofm knows it){meant}; the Hub may refuse the card's metadata. For a "
                     f"licence the Hub does not list, use 'other' with its name (license_name) "
                     f"and a URL of its text (license_link)")
    elif license == "other":
        missing = [w for w, v in (("its name (license_name)", license_name),
                                  ("a URL of its text (license_link)", license_link)) if not v]
        if missing:
            notes.append(f"license: 'other' without {' or '.join(missing)}: users cannot tell "
                         f"what 'other' allows")
    return notes
