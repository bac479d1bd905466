"""eofm inside someone else's program: importing it, building and running models, a training
run and a fine-tuning run leave the process's global state as they found it, but for what is
documented (a run seeds torch's global RNG with its ``data.seed``).

Each check runs in a fresh interpreter (``SNAPSHOT`` below): the third-party libraries eofm
imports are imported first, so only eofm's own changes are seen; the program also installs
its own signal handlers and logging, as a notebook or a larger application would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SNAPSHOT = textwrap.dedent('''
    import json, logging, multiprocessing, os, random, signal, sys, threading, warnings
    import numpy as np
    import torch
    import einops, huggingface_hub, omegaconf, safetensors, tifffile, timm, tqdm, webdataset
    import yaml, zarr

    def on_signal(signum, frame):  # the program's own handlers: they must be there after
        pass

    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(s, on_signal)
    logging.basicConfig(level=logging.WARNING)  # the program configured logging itself

    def snap():
        loggers = {n: (l.level, len(l.handlers), l.propagate, l.disabled)
                   for n, l in logging.root.manager.loggerDict.items()
                   if isinstance(l, logging.Logger) and not n.startswith("eofm")
                   and (l.level or l.handlers or not l.propagate or l.disabled)}
        return {
            "threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
            "default_dtype": str(torch.get_default_dtype()),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "backends": [torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                         torch.backends.cuda.flash_sdp_enabled(),
                         torch.backends.cuda.mem_efficient_sdp_enabled(),
                         torch.backends.cuda.math_sdp_enabled()],
            "deterministic": [torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled()],
            "grad": [torch.is_grad_enabled(), torch.is_anomaly_enabled()],
            "warnings": [repr(f) for f in warnings.filters],
            "environ": dict(os.environ),
            "torch_rng": torch.get_rng_state().tolist(),
            "numpy_rng": np.random.get_state()[1].tolist(),
            "python_rng": list(random.getstate()[1]),
            "signals": {s.name: signal.getsignal(s) is on_signal
                        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)},
            "excepthook": [sys.excepthook is sys.__excepthook__,
                           threading.excepthook is threading.__excepthook__],
            "start_method": multiprocessing.get_start_method(allow_none=True),
            "root_logger": [logging.root.level, [repr(h) for h in logging.root.handlers]],
            "loggers": loggers,
            "numpy_err": np.geterr(),
            "cwd": os.getcwd(),
            "threads_alive": sorted(t.name for t in threading.enumerate()),
            "recursion": sys.getrecursionlimit(),
            "process_group": torch.distributed.is_initialized(),
        }

    def changed(before, after):
        return sorted(k for k in before if before[k] != after[k])
''')


def _run(body: str, *args: str) -> dict:
    """Run ``SNAPSHOT`` + ``body`` (which prints one JSON line last) in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SNAPSHOT + textwrap.dedent(body), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_every_eofm_module_changes_no_process_state() -> None:
    result = _run('''
        import importlib, pkgutil
        before = snap()
        names = []
        for pkg in ("eofm.models", "eofm.data_shards", "eofm.pretrain", "eofm.finetune"):
            mod = importlib.import_module(pkg)
            names.append(pkg)
            for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
                if info.name.endswith("__main__") or ".sample" in info.name:
                    continue  # __main__ runs a command; sample holds data folders
                importlib.import_module(info.name)
                names.append(info.name)
        print(json.dumps({"changed": changed(before, snap()), "imported": len(names)}))
    ''')
    assert result["imported"] > 60
    assert result["changed"] == []


def test_models_and_the_hub_round_trip_change_no_process_state(tmp_path: Path) -> None:
    """create_model, a forward pass, save_pretrained and from_pretrained: torch's global RNG
    is drawn from (weight init, as any nn.Module), never reseeded; nothing else changes."""
    result = _run('''
        from eofm.models import create_model, from_pretrained, save_pretrained
        def work(seed):
            torch.manual_seed(seed)
            before = snap()
            m = create_model("vit_test_patch8", img_size=32, bands=["B02", "B03", "B04", "B08"])
            m(torch.randn(2, 4, 32, 32))
            folder = save_pretrained(m, sys.argv[1] + f"/enc{seed}")
            from_pretrained(str(folder))(torch.randn(1, 4, 32, 32))
            return before, snap()
        (b1, a1), (b2, a2) = work(1), work(2)
        print(json.dumps({"changed": changed(b1, a1),
                          "reseeded": a1["torch_rng"] == a2["torch_rng"]}))
    ''', str(tmp_path))
    assert not result["reseeded"]
    assert result["changed"] == ["torch_rng"]


def test_a_training_run_restores_what_it_changes(tiny_run_config, tmp_path: Path) -> None:
    """A Trainer built and fitted inside a program (deterministic, checkpoints written in the
    background): afterwards the program's signal handlers, torch's deterministic switch,
    logging, threads and the numpy/python RNGs are as before; torch's global RNG was seeded
    with data.seed (documented on Trainer)."""
    config = tiny_run_config({"schedule": {"steps": 3, "warmup_steps": 1},
                              "runtime": {"ckpt_every": 2, "async_checkpoint": True}},
                             name="etiquette")
    result = _run('''
        from eofm.pretrain.config import load_config
        from eofm.pretrain.trainer import run
        cfg = load_config(sys.argv[1], ["runtime.out_dir=" + sys.argv[2]])
        before = snap()
        status = run(cfg)
        print(json.dumps({"status": status, "changed": changed(before, snap())}))
    ''', str(config), str(tmp_path / "run"))
    assert result["status"] == 0
    assert result["changed"] == ["torch_rng"]


def test_constructors_do_not_switch_on_deterministic_algorithms(tiny_run_config,
                                                                tmp_path: Path) -> None:
    """runtime.deterministic holds for the span of fit() only: a Trainer merely built (to
    inspect its model or contract) leaves torch's switch alone."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    cfg = load_config(str(tiny_run_config(name="ctor")), [f"runtime.out_dir={tmp_path}"])
    assert cfg.runtime.deterministic and not torch.are_deterministic_algorithms_enabled()
    Trainer(cfg)
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_algorithms_restores_the_setting_found(tmp_path: Path) -> None:
    from eofm.pretrain.determinism import deterministic_algorithms

    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(KeyboardInterrupt), deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        raise KeyboardInterrupt
    assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the program's own, strict setting
    try:
        with deterministic_algorithms(True):
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        with deterministic_algorithms(False):
            assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
