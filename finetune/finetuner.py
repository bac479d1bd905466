"""One rank's fine-tuning run (:class:`Finetuner`): the encoder and its contract, the task
data and its held-out split, the wrapped model with layer-wise lr decay, the training loop
with checkpoints, resume checks and preemption, the held-out evaluation and the export.
``eofm-finetune`` (:mod:`.finetune`) builds one from its config and calls :meth:`fit`."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eofm.data_shards.manifest import atomic_write_text
from eofm.data_shards.remote import without_credentials
from eofm.pretrain import distributed as dist
from eofm.pretrain.checkpoint import (
    CheckpointManager,
    capture_rng,
    refuse_fresh_run_over_checkpoints,
    restore_rng,
)
from eofm.pretrain.config import ConfigError, micro_batch, save_resolved
from eofm.pretrain.determinism import deterministic_algorithms, seed_rank_streams
from eofm.pretrain.metrics import (
    JsonlLogger,
    Throughput,
    peak_memory_mb,
    progress_bar,
    setup_logging,
)
from eofm.pretrain.optim import NonFiniteGuard, adamw, set_lr
from eofm.pretrain.preemption import (
    REQUEUE_EXIT_CODE,
    PreemptionHandler,
    clear_requeue_marker,
    marks_requeue,
    write_requeue_marker,
)
from eofm.pretrain.resume_changes import changed_settings
from eofm.pretrain.schedules import warmup_cosine
from eofm.pretrain.startup import out_dir_problem
from eofm.pretrain.strategy import Strategy, wrap_model

from .batchnorm_check import single_value_batchnorm
from .encoder import check_encoder_license, load_encoder
from .features import Preprocess, note_adapter_bypass
from .finetune_config import FinetuneConfig, to_dict
from .finetuned import training_note
from .held_out import (
    aligned_test_data,
    check_test_bands,
    group_tiles_problem,
    held_out_split,
    source_images,
    test_source,
)
from .pictures import draw_predictions
from .rank_sync import broadcast_buffers, sync_batchnorm
from .report import confusion_png, data_notes
from .resume_checks import (
    FINETUNE_SECTIONS,
    NOT_RESUME_CHECKED,
    contract_problem,
    resume_problems,
    schedule_changes,
    split_fingerprint,
)
from .stop import caught, cut_short, stop_if_agreed
from .task_data import (
    Data,
    contract_preprocess,
    num_outputs,
    open_task_data,
    target_norm,
    target_valid,
)
from .tasks import (
    DENSE,
    IGNORE_INDEX,
    Evaluator,
    FinetuneModel,
    apply_freeze,
    augment,
    check_freeze,
    input_valid,
    lrd_param_groups,
    task_loss,
)

log = logging.getLogger("eofm.finetune")
HEADLINE = {"classification": "accuracy", "multilabel": "micro_map", "segmentation": "miou",
            "regression": "rmse"}


def _seed(*parts: int) -> int:
    """A reproducible generator seed from integers (seed, step, rank, micro-step)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Finetuner:
    """One rank's fine-tuning run; :meth:`fit` trains, evaluates and returns the exit status.

    Process-wide state it changes for a run it owns: building it seeds torch's global RNG
    with ``data.seed`` (the same head on every rank; an ``encoder.random_init`` encoder is drawn
    from ``data.seed`` too, before, in a forked RNG: :func:`.encoder.load_encoder`), then with a
    seed of each rank's own once the model is wrapped, a resumed :meth:`fit` sets the global RNG
    states to the checkpoint's; for the span of :meth:`fit` only (restored however it ends),
    ``runtime.deterministic`` turns torch's deterministic algorithms on and
    SIGTERM/SIGUSR1/SIGINT are caught. On several ranks, training BatchNorm layers become
    SyncBatchNorm on CUDA (on the CPU a warning says their statistics are per rank), and the
    held-out evaluation runs with rank 0's buffers on every rank (:mod:`.rank_sync`).
    """

    def __init__(self, cfg: FinetuneConfig, preempt: PreemptionHandler | None = None) -> None:
        self.cfg, t, self.preempt = cfg, cfg.task, preempt  # preempt: run()'s (.stop)
        self.env = dist.init_distributed()
        setup_logging(self.env.rank)
        self.device = dist.device_for(self.env)
        if reason := out_dir_problem(cfg.runtime.out_dir, self.env.rank):  # before data, model
            raise ConfigError([f"runtime.out_dir: {reason}; choose a folder this job can "
                               f"write (--out)"])
        refuse_fresh_run_over_checkpoints(cfg)  # resume=false over another run's checkpoints
        self.per_rank = micro_batch(cfg, self.env.world_size)
        if self.per_rank * self.env.world_size * cfg.optim.accum_steps != cfg.data.batch_size:
            raise ConfigError([f"data.batch_size: {cfg.data.batch_size} is not a multiple of "
                               f"world size {self.env.world_size} x optim.accum_steps "
                               f"{cfg.optim.accum_steps}"])
        self.encoder = load_encoder(cfg.encoder.path, drop_path=cfg.encoder.drop_path,
                                    random_init=cfg.encoder.random_init,
                                    global_pool=None if t.kind in DENSE else cfg.encoder.pool,
                                    seed=cfg.data.seed)  # random_init: the same on every rank
        check_encoder_license(cfg.encoder, self.encoder)
        check_freeze(self.encoder, cfg.encoder.freeze, cfg.encoder.last_n)  # before the data
        # data.modality unset: the modality holding most of the encoder's bands, as eofm-probe
        bands = self.encoder.contract.bands
        stop_if_agreed(preempt, self.device, "before the data was opened")
        self.data = open_task_data(cfg.data.path, t.kind, cfg.data.modality,
                                   cfg.data.s2_offset, prefer_bands=bands,
                                   progress=cfg.logging.progress)
        self.pre = contract_preprocess(self.data, self.encoder.contract, path=cfg.data.path,
                                       modality=cfg.data.modality,
                                       override=cfg.encoder.override_contract)
        note_adapter_bypass(self.pre, self.encoder)
        if cfg.data.test_path:
            self.test_data = aligned_test_data(self.data, open_task_data(
                cfg.data.test_path, t.kind, cfg.data.modality, cfg.data.s2_offset,
                prefer_bands=bands, progress=cfg.logging.progress, test_of=cfg.data.path))
            self.test_pre = contract_preprocess(
                self.test_data, self.encoder.contract, path=cfg.data.test_path,
                modality=cfg.data.modality, override=cfg.encoder.override_contract,
                field="data.test_path")
            check_test_bands(self.pre.bands, self.test_pre.bands, cfg.data)  # spectral
            self.train_idx, self.test_idx = np.arange(len(self.data)), np.arange(len(self.test_data))
        else:
            self.test_data, self.test_pre = self.data, self.pre
            self.train_idx, self.test_idx = held_out_split(self.data, t.kind, cfg.data)
        self.split = split_fingerprint(self.data, self.train_idx, self.test_data, self.test_idx)
        self.images = (source_images(self.data, self.train_idx),
                       source_images(self.test_data, self.test_idx))  # train, test
        self.num_outputs = num_outputs(t, self.data, self.test_data)
        self.target_norm = target_norm(t, self.data, self.train_idx)
        torch.manual_seed(cfg.data.seed)  # the same head on every rank
        model = FinetuneModel(self.encoder, t.kind, self.num_outputs, pool=cfg.encoder.pool,
                              dropout=t.dropout, decoder_channels=t.decoder_channels,
                              encoder_kwargs=self.pre.encoder_kwargs())
        self.trainable = apply_freeze(model, cfg.encoder.freeze, cfg.encoder.last_n)
        self._refuse_single_value_batchnorm(model)
        model = sync_batchnorm(model, self.device, self.env.world_size)  # CUDA; else a warning
        micro_per_epoch = len(self.train_idx) // (self.per_rank * self.env.world_size)
        if micro_per_epoch < 1:
            raise ValueError(f"data.batch_size {cfg.data.batch_size} exceeds the "
                             f"{len(self.train_idx)} training samples; lower it")
        self.micro_per_epoch = micro_per_epoch
        # not floored: an epoch's leftover micro-batches carry over into the next (_train_indices)
        self.total, warmup = cfg.schedule.resolve(micro_per_epoch / cfg.optim.accum_steps)
        self.peak_lr = cfg.optim.peak_lr(cfg.data.batch_size)
        self.lrs = warmup_cosine(self.peak_lr, self.peak_lr * cfg.schedule.final_lr_ratio,
                                 self.total, warmup)
        self.strategy: Strategy = wrap_model(model, cfg, self.env, self.device, self.peak_lr)
        # the weights are the same on every rank now: from here on each rank draws its own
        # dropout and drop path (a resume restores each rank's saved streams over these)
        seed_rank_streams(cfg.data.seed, self.env.rank)
        o = cfg.optim
        groups = lrd_param_groups(self.strategy.module, o.weight_decay, o.layer_decay)
        # layer-decayed groups replace the default
        self.strategy.optimizer = adamw(groups, self.peak_lr, (o.betas[0], o.betas[1]), o.eps)
        self.out = Path(cfg.runtime.out_dir)
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.runtime.keep_last_k)
        self.guard = NonFiniteGuard(cfg.runtime.max_nonfinite_in_a_row)
        self.step = 0
        self.saved_step: int | None = None  # the step of the newest checkpoint this run wrote
        self.elapsed_before = 0.0  # training seconds of earlier launches (runtime.max_minutes)
        # runtime.max_minutes ended this launch's training before the last planned step
        # (set by :meth:`fit`; results.json's ``stopped_early``)
        self.budget_stopped = False
        self._t_fit = time.monotonic()

    def _refuse_single_value_batchnorm(self, model: FinetuneModel) -> None:
        """A ConfigError, before any training, when one sample per rank would give a training
        BatchNorm layer (a ResNet's, not frozen) one value per channel at this input size:
        torch would stop the first step with a message naming no setting."""
        if self.per_rank > 1:
            return
        x = self.batch(self.data, self.pre, self.train_idx[:1])[0].cpu()
        if not (names := single_value_batchnorm(model, x, model._frozen)):
            return
        cfg, w = self.cfg, self.env.world_size
        raise ConfigError([
            f"data.batch_size: {cfg.data.batch_size} is one sample per rank (world size {w} x "
            f"optim.accum_steps {cfg.optim.accum_steps}), and at the input size "
            f"{tuple(x.shape[-2:])} the encoder's training BatchNorm layers "
            f"{names[:3]}{' ...' if len(names) > 3 else ''} would see one value per channel, "
            "which torch refuses; expected at least 2 samples per rank: set data.batch_size "
            f"to {2 * w * cfg.optim.accum_steps} or more, or freeze them (encoder.freeze: "
            "frozen)"])

    # ------------------------------------------------------------------ data
    def batch(self, data: Data, pre: Preprocess, idx: Sequence[int], *,
              gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x (B, C, h, w) preprocessed, target, valid (B, H, W) or None) on the device;
        flipped/turned with ``gen`` (training augmentation)."""
        t, dev = self.cfg.task, self.device
        xs = [data.pixels(i) for i in idx]
        same = len({a.shape for a in xs}) == 1
        x = pre(np.stack(xs), dev) if same else torch.cat([pre(a[None], dev) for a in xs])
        valid = None
        if t.kind in DENSE:
            ys = np.stack([data.target(i) for i in idx])
            y = torch.as_tensor(ys, device=dev)
            valid = input_valid(np.stack(xs), pre.index, pre.nodata, dev)
            valid &= torch.as_tensor(target_valid(ys, t.ignore_value), device=dev)
            if t.kind == "segmentation":
                target = torch.where(valid, torch.nan_to_num(y.float()).long(), IGNORE_INDEX)
            else:
                mean, std = self.target_norm
                target = torch.where(valid, (torch.nan_to_num(y.float()) - mean) / std, 0.0)
        else:
            target = torch.as_tensor(np.asarray(data.labels)[list(idx)], device=dev)
            target = target.long() if t.kind == "classification" else target.float()
        if gen is not None:
            x, target, valid = augment(x, target, valid, gen)
        return x, target, valid

    def _train_indices(self, step: int, micro: int) -> np.ndarray:
        """This rank's samples for a micro-step: a seeded permutation per epoch, drop-last."""
        u = step * self.cfg.optim.accum_steps + micro
        epoch, j = divmod(u, self.micro_per_epoch)
        order = np.random.default_rng(_seed(self.cfg.data.seed, epoch)).permutation(self.train_idx)
        b, w = self.per_rank, self.env.world_size
        start = j * b * w + self.env.rank * b
        return order[start:start + b]

    # ------------------------------------------------------------------ checkpoints
    def _client_state(self) -> dict[str, Any]:
        """Plain run state stored beside model and optimiser."""
        return {"step": self.step, "elapsed_s": round(self.elapsed(), 3),
                "config": without_credentials(to_dict(self.cfg)),
                "task": self.cfg.task.kind,
                "split": self.split,
                "num_outputs": self.num_outputs, "target_norm": list(self.target_norm),
                "rng": dist.all_gather_object(capture_rng()), "nonfinite": self.guard.state_dict(),
                "contract": without_credentials(self.encoder.contract.to_dict())}

    def elapsed(self) -> float:
        """Wall-clock seconds this run has trained, over every launch of it."""
        return self.elapsed_before + time.monotonic() - self._t_fit

    def save(self) -> None:
        """Checkpoint model, optimiser and run state at the current step."""
        self.strategy.save(self.ckpt, self.step, self._client_state())
        dist.barrier()
        self.saved_step = self.step

    def resume(self) -> None:
        """Continue from the newest complete checkpoint in ``out_dir/checkpoints``, if any."""
        if not self.cfg.runtime.resume:
            return
        client = self.strategy.load(self.ckpt)
        if client is None:
            return
        self.check_resumed(client)
        self.step = int(client["step"])
        self.elapsed_before = float(client.get("elapsed_s", 0.0))
        rng = client.get("rng", [])
        if len(rng) == self.env.world_size:
            restore_rng(rng[self.env.rank])
        elif rng:  # the data order holds (it is global); augmentation and dropout draws do not
            log.warning("checkpoint of step %d was saved by %d ranks, resumed on %d: the data "
                        "order continues exactly, but random augmentation and dropout start "
                        "new streams, so the run will not repeat an uninterrupted one",
                        self.step, len(rng), self.env.world_size)
        self.guard.load_state_dict(client.get("nonfinite", {}))
        log.info("resumed from step %d", self.step)

    def check_resumed(self, client: dict[str, Any]) -> None:
        """Refuse (:class:`ConfigError`, each field with the checkpoint's and this run's value)
        a resume whose data order or held-out split would differ from the checkpoint's run
        (:func:`.resume_checks.resume_problems`; a moved copy of the same data is fine), or
        whose encoder has another input contract than the one the checkpoint was trained with
        (:func:`.resume_checks.contract_problem`; a moved copy of the same export is fine: the
        weights come from the checkpoint, the preprocessing from the contract). An older
        checkpoint without its contract is resumed unchecked, with a warning. Schedule changes
        are allowed, as pretraining allows them (a longer run): a warning lists them,
        old -> new."""
        saved, where = client.get("config"), self.ckpt.directory
        path_now = without_credentials(self.cfg.encoder.path)
        if not isinstance(client.get("contract"), dict):
            log.warning("the checkpoint (%s) predates storing the encoder's input contract, so "
                        "it cannot be checked to be this encoder's (%s): resumed unchecked",
                        where, path_now)
        config = saved if isinstance(saved, dict) else {}
        why = contract_problem(client.get("contract"),
                               without_credentials(self.encoder.contract.to_dict()), where,
                               ((config.get("encoder") or {}).get("path"), path_now))
        problems = [] if why is None else [why]
        if not config:  # no record of the config to compare with
            if problems:
                raise ConfigError(problems, "resumed configuration")
            return
        now = without_credentials(to_dict(self.cfg))
        problems = resume_problems(saved, now, len(self.train_idx), client.get("split"),
                                   self.split, where) + problems
        if problems:
            hint = group_tiles_problem(self.data, self.cfg.task.kind, self.cfg.data, saved,
                                       client.get("split"), self.split, where)
            raise ConfigError(problems + ([hint] if hint else []), "resumed configuration")
        changed = schedule_changes(saved, now)
        if changed:
            log.warning("the schedule differs from the checkpoint's (%s): from the resumed step "
                        "on it follows the new one", ", ".join(changed))
        other = changed_settings(saved, now, FINETUNE_SECTIONS, NOT_RESUME_CHECKED)
        if other:
            log.warning("settings differ from the checkpoint's run (%s): training goes on with "
                        "this config's from step %s; results.json and OUT/model state these "
                        "values only", ", ".join(other), client.get("step"))

    # ------------------------------------------------------------------ loop
    def fit(self) -> int:
        """Train to the last step, evaluate and export; 0, or the requeue status when preempted.
        Returns once every checkpoint is on disk (``runtime.async_checkpoint`` too); raises
        the error of one that failed. An exception propagates after a background write ends."""
        with deterministic_algorithms(self.cfg.runtime.deterministic):
            try:
                return self._fit()
            except BaseException:
                self.ckpt.settle()  # another exception is already on its way
                raise

    def _fit(self) -> int:
        cfg, task = self.cfg, self.cfg.task.kind
        main = self.env.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            clear_requeue_marker(self.out)
        self.resume()
        if main:  # after resume: a refused one keeps the config.yaml it names
            save_resolved(cfg, self.out)
        stop_if_agreed(self.preempt, self.device, f"before training from step {self.step}")
        if main:  # what preprocessing fixed, noted or was told to override, as eofm-probe says
            for item in self.pre.fixed:
                log.info("fixed: %s", item)
            for item in self.pre.notes:
                log.warning("note: %s", item)
            for item in self.pre.overridden:
                log.warning("OVERRIDDEN contract difference: %s", item)
        log.info("%s: %d train / %d test samples (of %d / %d source images), %d trainable "
                 "parameters (freeze=%s), %d steps, peak lr %.3g", task, len(self.train_idx),
                 len(self.test_idx), *self.images, self.trainable, cfg.encoder.freeze,
                 self.total, self.peak_lr)
        metrics = JsonlLogger(self.out / cfg.logging.jsonl if cfg.logging.jsonl else None,
                              enabled=main)
        metrics.drop_after(self.step)  # steps after the resumed checkpoint are run again
        meter = Throughput(tokens_per_sample=self.encoder.num_tokens)
        bar = progress_bar(self.total, self.step, enabled=cfg.logging.progress and main)
        every, accum, stopped = cfg.logging.log_every, cfg.optim.accum_steps, False
        budget = cfg.runtime.max_minutes  # the run's training time, over every launch
        self._t_fit = time.monotonic()
        first_step = self.step
        spent_before = cfg.runtime.budget_spent(self.elapsed_before)
        self.budget_stopped = spent_before and self.step < self.total
        if self.budget_stopped:
            log.warning("runtime.max_minutes=%s was spent by earlier launches of this run at "
                        "step %d of %d: evaluating now; raise runtime.max_minutes to go on",
                        budget, self.step, self.total)
        self.strategy.module.train()
        with caught(self.preempt) as preempt:
            while not spent_before and self.step < self.total:
                set_lr(self.strategy.optimizer, float(self.lrs[self.step]))
                losses = []
                for micro in range(accum):
                    t0 = time.perf_counter()
                    gen = torch.Generator().manual_seed(
                        _seed(cfg.data.seed, self.step, self.env.rank, micro))
                    x, y, valid = self.batch(self.data, self.pre, self._train_indices(
                        self.step, micro), gen=gen if cfg.data.augment else None)
                    meter.data_wait(time.perf_counter() - t0, len(x))
                    size = tuple(y.shape[-2:]) if task in DENSE else None
                    losses.append(self.strategy.forward_backward(
                        lambda m, x=x, y=y, v=valid, s=size: task_loss(task, m(x, s), y, v),
                        last=micro == accum - 1))
                norm, stepped = self.strategy.finish_step()
                self.step += 1
                meter.step_done()
                if self.step % every == 0 or self.step == self.total:
                    loss = float(dist.all_reduce_mean(torch.stack(losses).mean()))
                    self.guard.update(stepped and math.isfinite(loss), self.step)
                    metrics.log({"step": self.step, "loss": loss, "lr": float(self.lrs[self.step - 1]),
                                 "grad_norm": float(norm), **meter.summary(),
                                 "peak_mem_mb": peak_memory_mb(self.device)})
                    bar.set_postfix(loss=f"{loss:.4f}")
                else:
                    self.guard.update(stepped, self.step)
                # every step, as the pretraining trainer does (a host-side flag, no GPU sync): a
                # preemption's grace period must not wait for the next log step
                stop = dist.any_across_ranks(preempt.should_stop, self.device)
                spent = cfg.runtime.budget_spent(self.elapsed())
                if dist.any_across_ranks(spent and main, self.device):
                    log.warning("runtime.max_minutes=%s spent at step %d of %d (training time "
                                "over every launch of this run): evaluating now",
                                budget, self.step, self.total)
                    # checkpointed, evaluated and exported below, marked as stopped early
                    self.budget_stopped = self.step < self.total
                    break
                bar.update(1)
                if stop or (cfg.runtime.ckpt_every and self.step % cfg.runtime.ckpt_every == 0):
                    self.save()
                if stop:
                    self.ckpt.wait()  # on disk before the job says it may be requeued
                    if marks_requeue(self.env.rank, self.env.local_rank):
                        write_requeue_marker(self.out)
                    stopped = True
                    break
        bar.close()
        if stopped:
            metrics.close()
            return REQUEUE_EXIT_CODE
        # a run run again after its end is evaluated, not re-saved; nor a last step saved already
        if self.step > first_step and self.saved_step != self.step:
            self.save()
        self.ckpt.wait()
        with cut_short(self.preempt, self.evaluate, "the held-out evaluation", self.env.world_size):
            results = self.evaluate()
        if task in DENSE:
            draw_predictions(self, write=main)
        stop_if_agreed(self.preempt, self.device, "during the held-out evaluation")
        # a finished run run again is evaluated again: its record replaces the step's last one
        metrics.drop_after(self.step, also=lambda r: "test" in r and r.get("step") == self.step)
        metrics.log({"step": self.step, "test": results["metrics"]})
        metrics.close()
        if main:  # results.json last: no run stopped before it looks done (.stop)
            with cut_short(self.preempt, self.export, "the export", self.env.world_size):
                if results["metrics"].get("confusion"):  # classification and segmentation
                    confusion_png(results["metrics"]["confusion"], self.out / "confusion.png",
                                  results["classes"])
                self.export(results)
        stop_if_agreed(self.preempt, self.device, "during the export")
        if main:
            atomic_write_text(self.out / "results.json",
                              json.dumps(without_credentials(results), indent=2) + "\n")
            name = HEADLINE[task]
            early = (f" ({training_note(self.step, self.total, True)})"
                     if results["stopped_early"] else "")
            print(f"eofm-finetune: {task} {name} {results['metrics'][name]:.4f} on "
                  f"{len(self.test_idx)} test samples{early} -> {self.out / 'results.json'}")
            for note in data_notes(results):  # tiles the data's build dropped, as eofm-probe
                print(f"eofm-finetune: note: {note}")
        dist.barrier()
        return 0

    def eval_model(self) -> nn.Module:
        """The module to run held-out forwards on (FSDP2's wrapper, which gathers weights)."""
        return self.strategy.model if self.strategy.kind == "fsdp2" else self.strategy.module

    def infer(self, model: nn.Module, x: Tensor, size: tuple[int, int] | None) -> Tensor:
        """One held-out forward under the run's autocast (``size``: a dense task's output)."""
        amp = self.strategy.amp
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            return model(x, size)

    def training_status(self) -> dict[str, Any]:
        """How far training went: ``steps`` (optimiser steps trained, over every launch),
        ``planned_steps`` (the schedule's total) and ``stopped_early`` (``runtime.max_minutes``
        ended training before the last planned step: the metrics are those of a shorter run
        than the config asks for; false for a run that reached its end, resumed or not)."""
        return {"steps": self.step, "planned_steps": self.total,
                "stopped_early": bool(self.budget_stopped and self.step < self.total)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Metrics on the held-out split (every rank a share, merged); the results record,
        with how far training went (:meth:`training_status`). Every rank first takes rank 0's
        buffers (BatchNorm running statistics: what the checkpoint and the export hold)."""
        task, bs = self.cfg.task.kind, self.cfg.data.eval_batch_size
        broadcast_buffers(self.strategy.module)  # each rank's own otherwise (:mod:`.rank_sync`)
        model = self.eval_model()
        model.eval()
        mine = self.test_idx[self.env.rank::self.env.world_size]
        batches = math.ceil(math.ceil(len(self.test_idx) / self.env.world_size) / bs)
        ev = Evaluator(task, self.num_outputs)
        for b in range(batches):  # the same number of forwards on every rank (FSDP2)
            idx = mine[b * bs:(b + 1) * bs]
            x, y, valid = self.batch(self.test_data, self.test_pre,
                                     idx if len(idx) else self.test_idx[:1])
            out = self.infer(model, x, tuple(y.shape[-2:]) if task in DENSE else None)
            if len(idx):
                ev.update(out, y, valid)
        ev = Evaluator(task, self.num_outputs).merge(dist.all_gather_object(ev.state()))
        scores = ev.result(target_scale=self.target_norm[1])
        model.train()
        return {"task": task, "metrics": scores, "headline": HEADLINE[task],
                "train_samples": len(self.train_idx), "test_samples": len(self.test_idx),
                "train_images": self.images[0], "test_images": self.images[1],
                "test_source": test_source(self.cfg.data, self.data),
                # the held-out forwards ran under the run's autocast: bf16 logits can differ
                # from load_finetuned's float32 ones in the last digits
                "eval_precision": "fp32" if self.strategy.amp is None else "bf16",
                "classes": list(getattr(self.data, "classes", [])), **self.training_status(),
                "encoder": self.cfg.encoder.path, "freeze": self.cfg.encoder.freeze,
                "target_norm": {"mean": self.target_norm[0], "std": self.target_norm[1]},
                "preprocess": self.pre.to_dict(), "config": to_dict(self.cfg),
                # what was read: sources, bands, counts, the Sentinel-2 offset the pixels got
                "data": self.data.describe(),
                **({"test_data": self.test_data.describe()}
                   if self.test_data is not self.data else {})}

    def task_record(self, results: dict[str, Any]) -> dict[str, Any]:
        """config.json's record of the fine-tuned task (:func:`finetuned.task_record`)."""
        from .finetuned import task_record

        name = HEADLINE[self.cfg.task.kind]
        evaluation = {"headline": name, name: results["metrics"].get(name),
                      "test_samples": results["test_samples"],
                      "test_source": results["test_source"],
                      "steps": results["steps"], "planned_steps": results["planned_steps"],
                      "stopped_early": results["stopped_early"],
                      "training": training_note(results["steps"], results["planned_steps"],
                                                results["stopped_early"])}
        return task_record(self.strategy.module, classes=list(getattr(self.data, "classes", [])),
                           target_norm=self.target_norm,
                           override_contract=self.cfg.encoder.override_contract,
                           fine_tuned_from=self.cfg.encoder.path, evaluation=evaluation)

    def export(self, results: dict[str, Any]) -> None:
        """``OUT/model``: the fine-tuned encoder + ``head.*`` tensors, the task in config.json
        and ``results``' metrics in the card (single process/DDP); see
        :func:`eofm.finetune.finetuned.load_finetuned`."""
        from .finetuned import export_finetuned

        if self.strategy.kind == "fsdp2":
            log.info("FSDP2: the fine-tuned weights are in the checkpoint; no model/ export")
            return
        data = Path(str(self.cfg.data.path).rstrip("/")).name
        title = f"eofm {self.encoder.model_name} fine-tuned for {self.cfg.task.kind} on {data}"
        export_finetuned(self.strategy.module, self.out / "model",
                         record=self.task_record(results), results=results, title=title,
                         license=self.cfg.encoder.license or None,
                         license_name=self.cfg.encoder.license_name or None,
                         license_link=self.cfg.encoder.license_link or None,
                         bands=self.pre.bands)


__all__ = ["HEADLINE", "Finetuner"]
