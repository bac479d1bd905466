"""``eofm-pretrain`` / ``python -m eofm.pretrain``: the same command alone and under torchrun."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface: a YAML config plus ``key=value`` overrides."""
    p = argparse.ArgumentParser(
        prog="eofm-pretrain",
        description="Pretrain an EO encoder. Runs alone or under torchrun/srun unchanged.",
        epilog="Examples of overrides: schedule.steps=20 (a short smoke run), "
               "runtime.strategy=deepspeed runtime.zero_stage=2 (DeepSpeed ZeRO-2), "
               "runtime.out_dir=runs/try2 optim.base_lr=3e-4.")
    p.add_argument("--config", required=True, help="experiment YAML (e.g. launch/configs/quickstart.yaml)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved, checked configuration (every key, with what it "
                        "means) and exit without training")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied after the YAML file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, the requeue status when preempted)."""
    a = build_parser().parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"eofm-pretrain: {e}", file=sys.stderr)
        return 2
    if a.print_config:
        from .config_doc import annotated_yaml

        print(annotated_yaml(cfg))
        return 0
    from .trainer import run

    try:
        return run(cfg)
    except ConfigError as e:
        print(f"eofm-pretrain: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
