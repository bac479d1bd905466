"""``eofm-finetune``: fine-tune an exported encoder with a task head, on pretraining's runtime.

Classification, multi-label, semantic segmentation and pixel regression; frozen, last-n or full
fine-tuning with layer-wise lr decay, of a ViT (its blocks; drop path 0.2 unless
``encoder.drop_path`` says otherwise) or the ResNet-50 (its 4 stages; no drop path).
Preprocessing always comes from the encoder's input contract. The run uses pretraining's
distributed setup, ``wrap_model`` (single/DDP/FSDP2), atomic checkpoints with resume (refused
when the data order, the held-out split or the encoder's input contract would differ from the
checkpoint's run: :mod:`.resume_checks`), JSON-lines metrics and a rank-0 progress bar; at the
end the held-out split (``data.test_path``, or ``data.test_fraction`` of the source images,
every tile of an image on one side unless ``data.group_tiles`` is false) is evaluated into
``OUT/results.json`` (with ``OUT/confusion.png`` for classes, ``OUT/predictions.png`` for dense
tasks; ``planned_steps`` and ``stopped_early`` say whether ``runtime.max_minutes`` ended
training before its last step, as do the card and the final line) and the model exported to
``OUT/model``: encoder (``global_pool`` the pool used) + ``head.*`` tensors, the task recorded
in config.json, the held-out metrics in the card;
:func:`eofm.finetune.finetuned.load_finetuned` rebuilds encoder + head and predicts as the run
did. ``eofm.models.from_pretrained`` loads the encoder alone, with its own pooled features:
with pool ``avg`` a ViT's head read the mean before the final norm instead
(``encoder(x, norm=False)``; :mod:`.finetuned`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eofm.data_shards.command import REFUSED, error, run_command, stdout_may_close
from eofm.pretrain import distributed as dist
from eofm.pretrain.preemption import PreemptionHandler, StopRequested, requeue_exit

from .finetune_config import FinetuneConfig, load_config
from .finetuner import Finetuner
from .tasks import TASKS


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(
        prog="eofm-finetune",
        description="Fine-tune an exported encoder with a task head on labelled data.",
        epilog="Overrides, e.g.: encoder.freeze=last_n encoder.last_n=4 optim.layer_decay=0.65 "
               "schedule.steps=200 data.batch_size=64 task.ignore_value=255. Under torchrun "
               "the same command runs data-parallel.")
    p.add_argument("--encoder", help="export folder (eofm-export) or Hub repo id ORG/NAME")
    p.add_argument("--data", help="labelled data: eofm-shard build output (shards/zarr; built "
                                  "with --seg-dir for segmentation/regression) or an EuroSAT-"
                                  "layout folder")
    p.add_argument("--task", choices=TASKS, help="what to fine-tune for")
    p.add_argument("--out", help="run folder: checkpoints, metrics.jsonl, results.json, model/")
    p.add_argument("--config", help="YAML with any of the config sections (e.g. "
                                    "launch/configs/finetune_eurosat_cpu.yaml)")
    p.add_argument("--override-contract", action="store_true",
                   help="fine-tune on data that breaks the encoder's input contract; "
                        "results.json lists every difference")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved, checked configuration (every key, with what it "
                        "means) and exit without training")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return p


@stdout_may_close
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 2 refused input, 75 preempted, 1 with a
    message when the disk or the quota is full)."""
    a = build_parser().parse_intermixed_args(argv)  # overrides before, between or after flags
    flags = {k: v for k, v in (("encoder.path", a.encoder), ("data.path", a.data),
                               ("task.kind", a.task), ("runtime.out_dir", a.out)) if v}
    if a.override_contract:
        flags["encoder.override_contract"] = True
    try:
        cfg = load_config(a.config, a.overrides, flags=flags)
    except ValueError as e:  # ConfigError: every problem at once
        error("eofm-finetune", e)
        return REFUSED
    if a.print_config:
        from eofm.pretrain.config_doc import annotated_yaml

        print(annotated_yaml(cfg))
        return 0
    # ValueError: data, contract or encoder refused with the difference; a full disk: the
    # newest complete checkpoint is intact and a rerun resumes from it once there is room
    return run_command("eofm-finetune", lambda: run(cfg), out=cfg.runtime.out_dir,
                       interrupted="the same command resumes from the newest checkpoint")


def run(cfg: FinetuneConfig) -> int:
    """Fine-tune and evaluate with ``cfg``, then tear the process group down; the exit status.

    SIGTERM, SIGUSR1 and a first Ctrl-C are caught from the start to the end (:mod:`.stop`):
    a stop while the job starts ends it with the requeue status and marker, nothing trained or
    saved (a raw folder's build is cut short at once); one during the evaluation or the export
    too, the final checkpoint saved, so the rerun evaluates and exports again."""
    from eofm.data_shards.build import build  # what open_task_data runs for a raw folder

    with PreemptionHandler() as preempt:
        try:
            try:
                with preempt.interrupting(build, "the raw data folder's build"):
                    finetuner = Finetuner(cfg, preempt)
            except StopRequested as e:
                return requeue_exit(dist.get_rank(), dist.get_local_rank(), cfg.runtime.out_dir,
                                    f"{e}: nothing trained or saved; the rerun starts over")
            try:
                return finetuner.fit()
            except StopRequested as e:
                return requeue_exit(finetuner.env.rank, finetuner.env.local_rank, finetuner.out,
                                    f"{e}: the rerun resumes from the newest checkpoint")
        finally:
            dist.teardown()


__all__ = ["build_parser", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
