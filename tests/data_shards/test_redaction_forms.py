"""Credentials in the forms a ``pipe:`` command or a URL commonly carries them: curl's
``-u``/``--user``/``--proxy-user``, secret-named HTTP headers, passwords holding ``@`` or
``/``. :func:`redact` and :func:`without_credentials` (what config.yaml, checkpoints, reports
and logs go through) hide each, keep host, path and bucket readable, and leave commands
without credentials as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eofm.data_shards.remote import holds_location, redact, without_credentials

SECRET = "S3CRET"
URL = "https://data.example.org/ds/{name}"

# (as typed, as redacted): each secret gone, everything else as typed
FORMS = [
    (f"pipe:curl -s -u alice:{SECRET} {URL}", f"pipe:curl -s -u *** {URL}"),
    (f"pipe:curl -su alice:{SECRET} {URL}", f"pipe:curl -su *** {URL}"),
    (f"pipe:curl -s -ualice:{SECRET} {URL}", f"pipe:curl -s -u*** {URL}"),
    (f"pipe:curl -s --user alice:{SECRET} {URL}", f"pipe:curl -s --user *** {URL}"),
    (f"pipe:curl -s --user=alice:{SECRET} {URL}", f"pipe:curl -s --user=*** {URL}"),
    (f"pipe:curl -s --user 'alice:{SECRET}' {URL}", f"pipe:curl -s --user '***' {URL}"),
    (f'pipe:curl -s -u "alice:{SECRET}" {URL}', f'pipe:curl -s -u "***" {URL}'),
    (f"pipe:curl -s -x http://proxy:3128 --proxy-user bob:{SECRET} {URL}",
     f"pipe:curl -s -x http://proxy:3128 --proxy-user *** {URL}"),
    (f"pipe:curl -s -U bob:{SECRET} {URL}", f"pipe:curl -s -U *** {URL}"),
    (f"pipe:curl -s --oauth2-bearer {SECRET} {URL}", f"pipe:curl -s --oauth2-bearer *** {URL}"),
    (f"pipe:curl -s -H 'X-Api-Key: {SECRET}' {URL}", f"pipe:curl -s -H 'X-Api-Key: ***' {URL}"),
    (f'pipe:curl -s -H "Authorization: Bearer {SECRET}" {URL}',
     f'pipe:curl -s -H "Authorization: Bearer ***" {URL}'),
    (f"pipe:curl -s --header 'Proxy-Authorization: Basic {SECRET}' {URL}",
     f"pipe:curl -s --header 'Proxy-Authorization: Basic ***' {URL}"),
    (f"pipe:curl -s -H 'X-Auth-Token: {SECRET}' {URL}",
     f"pipe:curl -s -H 'X-Auth-Token: ***' {URL}"),
    (f"pipe:curl -s -H 'PRIVATE-TOKEN: {SECRET}' {URL}",
     f"pipe:curl -s -H 'PRIVATE-TOKEN: ***' {URL}"),
    (f"pipe:curl -s -H 'Cookie: session={SECRET}; theme=dark' {URL}",
     f"pipe:curl -s -H 'Cookie: ***' {URL}"),
    (f"pipe:curl -s -H X-Api-Key:{SECRET} {URL}", f"pipe:curl -s -H X-Api-Key:*** {URL}"),
    (f"pipe:wget -qO- --header='X-Goog-Api-Key: {SECRET}' {URL}",
     f"pipe:wget -qO- --header='X-Goog-Api-Key: ***' {URL}"),
    (f"pipe:wget -qO- --user alice --password {SECRET} {URL}",
     f"pipe:wget -qO- --user *** --password *** {URL}"),
    (f"pipe:rclone cat --s3-secret-access-key {SECRET} s3:bucket/ds/{{name}}",
     "pipe:rclone cat --s3-secret-access-key *** s3:bucket/ds/{name}"),
    # a password holding a raw '@' (the user part runs to the last '@' before the host)
    (f"https://alice:p@{SECRET}@data.example.org/ds", "https://***@data.example.org/ds"),
    (f"https:/alice:p@{SECRET}@data.example.org/ds", "https:/***@data.example.org/ds"),
    # ... or a raw '/' (an AWS secret key pasted unencoded)
    (f"s3://AKIAEXAMPLE:wJal/{SECRET}+x@bucket/ds/{{name}}", "s3://***@bucket/ds/{name}"),
    # an error quoting the command's arguments as a Python list
    (f"(['curl', '-s', '-u', 'alice:{SECRET}', '{URL}'], {{}}): exit 22",
     f"(['curl', '-s', '-u', '***', '{URL}'], {{}}): exit 22"),
    (f"(['curl', '-H', 'X-Api-Key: {SECRET}', '{URL}'], {{}}): exit 22",
     f"(['curl', '-H', 'X-Api-Key: ***', '{URL}'], {{}}): exit 22"),
    # a pipe: command as one input of a comma-separated list
    (f"/data/s1, pipe:curl -s -u alice:{SECRET} data.example.org/s2",
     "/data/s1, pipe:curl -s -u *** data.example.org/s2"),
]


@pytest.mark.parametrize(("text", "expected"), FORMS)
def test_redact_hides_each_credential_form_and_keeps_the_rest(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert holds_location(text)
    assert without_credentials({"data": {"path": text}}) == {"data": {"path": expected}}
    # a stored (redacted) path reads as redacted again: eofm-export asks for --data then
    assert redact(expected) == expected


@pytest.mark.parametrize("text", [
    "pipe:aws s3 cp s3://bucket/ds/{name} -",
    "hf://datasets/org/name@main/shards/{name}",  # the '@' of a revision is no user part
    "http://localhost:8080/ds/a@b.tar",  # nor one after a host:port
    "pipe:curl -s -A 'eofm/1.0' --user-agent eofm -o - https://h/ds/{name}",
    "pipe:wget -qO- --ask-password https://h/ds/{name}",  # a flag: the URL is no password
    "pipe:curl -s -H 'Accept: application/x-tar' https://h/ds/{name}",
])
def test_redact_keeps_commands_without_credentials(text: str) -> None:
    assert redact(text) == text


def test_save_resolved_writes_no_credential_of_a_pipe_data_path(tmp_path: Path) -> None:
    """config.yaml of a run reading ``pipe:curl -u user:password URL`` (a usable data path)
    names the command and the URL, not the password; so does a checkpoint's config (the
    trainer stores ``without_credentials(to_dict(cfg))``, the same function)."""
    from eofm.pretrain.config import TrainConfig, save_resolved, to_dict

    cfg = TrainConfig()
    cfg.data.path = f"pipe:curl -s -u alice:{SECRET} -H 'X-Api-Key: {SECRET}' {URL}"
    cfg.data.build_more = [f"https://alice:p@{SECRET}@data.example.org/raw"]
    written = save_resolved(cfg, tmp_path / "run").read_text(encoding="utf-8")
    assert SECRET not in written
    saved = yaml.safe_load(written)["data"]
    assert saved["path"] == f"pipe:curl -s -u *** -H 'X-Api-Key: ***' {URL}"
    assert saved["build_more"] == ["https://***@data.example.org/raw"]
    assert SECRET not in repr(without_credentials(to_dict(cfg)))
    assert SECRET in cfg.data.path  # the run itself still reads with the password
