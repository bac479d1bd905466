"""Every ```python block of a generated model card runs as a reader copies it: verbatim, in a
fresh process, from another folder, offline, with the export in a Hugging Face cache under the
repo id the card names (``ORG/NAME`` when the export names none, as a reader's upload would
be). The eofm block made no input (``raw`` was only described in a comment: NameError); it now
makes an example batch from the contract's statistics and prints the shape it claims. A card
without a repo id says what ``ORG/NAME`` stands for and gives the local-folder forms, which
load the folder itself."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import eofm.models
from eofm.models import InputContract, create_model, save_pretrained

S2 = ["B02", "B03", "B04"]
STACKED = ["B02", "B03", "B04", "VV", "VH"]
PLACEHOLDER = "ORG/NAME"


def _s2_export(folder: Path) -> Path:
    """A fixed-band Sentinel-2 encoder (mean/std statistics, nodata 0), no repo id."""
    stats = {b: {"mean": 1000.0 + 100 * i, "std": 300.0} for i, b in enumerate(S2)}
    contract = InputContract(sensors=("s2_l2a",), bands=S2, gsd=10.0,
                             units="DN (x 0.0001 = physical)", processing_level="L2A",
                             nodata=0.0, normalisation="meanstd", stats=stats,
                             input_size=(16, 16), patch_size=8, objective="mae", data="s2")
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=S2, img_size=16, contract=contract).eval()
    return save_pretrained(enc, folder)


def _stacked_export(folder: Path, repo_id: str | None) -> Path:
    """A spectral, GSD-aware encoder of stacked Sentinel-2 + Sentinel-1 bands (percentile
    statistics, S1 in negative dB, per-band nodata and units)."""
    stats = {b: {"p2": 200.0, "p98": 3000.0} for b in STACKED[:3]}
    stats.update(VV={"p2": -20.0, "p98": -3.0}, VH={"p2": -27.0, "p98": -10.0})
    contract = InputContract(
        sensors=("s2_l2a+s1_grd",), bands=STACKED, gsd=10.0, processing_level="L2A+L1 GRD",
        wavelengths=[492.4, 559.8, 664.6, 55465764.66, 55465764.66],
        bandwidths=[66.0, 36.0, 31.0, 1.0, 2.0],
        units=["DN (x 0.0001 = physical)"] * 3 + ["dB", "dB"],
        nodata=[0.0, 0.0, 0.0, None, None], normalisation="percentile", stats=stats,
        input_size=(16, 16), patch_size=8, objective="mae", data="s2s1")
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer="spectral", img_size=16, gsd_pos=True,
                       global_pool="avg", contract=contract).eval()
    return save_pretrained(enc, folder, card={"repo_id": repo_id} if repo_id else None)


def _hub_cache(folder: Path, repo_id: str, cache: Path) -> Path:
    """A Hugging Face cache holding ``folder``'s files as model repo ``repo_id`` (revision
    main), as ``hf download`` leaves one: what an offline reader of the card has."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    rev = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    shutil.copytree(folder, repo / "snapshots" / rev)
    return cache


def _blocks(card: str) -> list[str]:
    """The card's ```python blocks, as written."""
    return re.findall(r"```python\n(.*?)```", card, re.S)


def _run(code: str, where: Path, cache: Path) -> subprocess.CompletedProcess:
    """``code`` as a script of its own in ``where``, run there offline against ``cache``."""
    where.mkdir(parents=True, exist_ok=True)
    script = where / "snippet.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(cache.parent / "hf_home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script)], cwd=where, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a fresh Python per block
@pytest.mark.parametrize("case", ["s2_no_repo", "stacked_spectral_repo"])
def test_every_python_block_of_a_card_runs_as_copied(case: str, tmp_path: Path) -> None:
    repo_id = None if case == "s2_no_repo" else "acme/eofm-s2s1"
    folder = (_s2_export(tmp_path / "export") if repo_id is None
              else _stacked_export(tmp_path / "export", repo_id))
    card = (folder / "README.md").read_text()
    blocks = _blocks(card)
    assert len(blocks) == 2, "expected the eofm and the timm block"
    named = set(re.findall(r'from_pretrained\("([^"]+)"\)|"hf-hub:([^"]+)"',
                           "\n".join(blocks))) - {("", "")}
    assert {a or b for a, b in named} == {repo_id or PLACEHOLDER}
    cache = _hub_cache(folder, repo_id or PLACEHOLDER, tmp_path / "cache")
    runs = [_run(code, tmp_path / "elsewhere" / str(i), cache) for i, code in enumerate(blocks)]
    for i, (code, done) in enumerate(zip(blocks, runs, strict=True)):
        assert done.returncode == 0, f"block {i} failed:\n{code}\n{done.stderr[-2000:]}"
    claimed = re.search(r"print\(features\.shape\)\s+# (torch\.Size\(\[2, \d+\]\))", blocks[0])
    assert claimed, blocks[0]
    assert runs[0].stdout.strip().splitlines()[-1] == claimed.group(1) == "torch.Size([2, 64])"


def test_a_card_without_a_repo_id_says_what_org_name_is_and_how_to_load_the_folder(
        tmp_path: Path) -> None:
    """No --push-to-hub: the card names ORG/NAME, says to replace it with the repo the folder
    goes to, and gives eofm's and timm's local-folder forms, which (with the folder's path)
    load this export's weights; a card with a repo id names it and no placeholder."""
    folder = _s2_export(tmp_path / "export")
    card = (folder / "README.md").read_text()
    usage = card.split("## How to load", 1)[1]
    assert f"replace `{PLACEHOLDER}` below with the repo you upload this folder to" in usage
    local = re.findall(r"`((?:eofm\.models\.from_pretrained|timm\.create_model)"
                       r"\(\"(?:local-dir:)?path/to/this/folder\"[^`]*\))`", usage)
    assert len(local) == 2, usage
    ref = eofm.models.from_pretrained(folder).state_dict()
    for form in local:
        model = eval(form.replace("path/to/this/folder", str(folder)),  # the card's own code
                     {"eofm": eofm, "timm": timm})
        got = model.state_dict()
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref), form
    named = (_stacked_export(tmp_path / "named", "acme/eofm-s2s1") / "README.md").read_text()
    assert PLACEHOLDER not in named and 'from_pretrained("acme/eofm-s2s1")' in named
