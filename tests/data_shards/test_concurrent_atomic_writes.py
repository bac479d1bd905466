"""Two processes writing one file with atomic_write_text (two eofm-probe runs on one --out):
a shared temporary name made one's rename fail ("cannot write") and let a reader see a torn
file; each process now renames a whole file of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WRITER = """
import json, sys
from eofm.data_shards.manifest import atomic_write_text
path, tag = sys.argv[1], sys.argv[2]
for i in range(150):
    atomic_write_text(path, json.dumps({"tag": tag, "i": i, "pad": "x" * 20000}))
"""


def test_two_writers_of_one_file_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"tag": "start"}))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag],
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    seen = 0
    while any(p.poll() is None for p in procs):
        json.loads(path.read_text())  # always a whole file
        seen += 1
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert json.loads(path.read_text())["i"] == 149
    assert not list(tmp_path.glob(".*.tmp"))
