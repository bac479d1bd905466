"""The step-based pretraining loop: one code path from a 2-core CPU to multi-node GPU jobs.

Per optimiser step: ``accum_steps`` micro-batches (no gradient all-reduce except on the last;
``optim.loss_norm`` says how their losses are weighed: :mod:`.strategy`), clipping, a
non-finite check that skips the step, the lr from a precomputed warmup + cosine schedule.
Masks are drawn from a generator seeded by (seed, step, rank, micro-step), the data
position is part of every checkpoint, and RNG states are restored, so a job killed at any
point and restarted continues exactly where its last checkpoint was taken. SIGTERM/SIGUSR1
(SLURM preemption) and Ctrl-C save a checkpoint at the next step boundary and exit with the
requeue status; under :func:`run` (``eofm-pretrain``) they are caught from the start, so a
stop requested while the job starts (dataset build, model, checkpoint load) exits with the
requeue status too, before the first step.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eofm.data_shards.checks import is_zarr
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.remote import without_credentials
from eofm.data_shards.sensors import get_sensor

from . import distributed as dist
from .checkpoint import (
    CheckpointManager,
    agree_written,
    capture_rng,
    refuse_fresh_run_over_checkpoints,
    restore_rng,
)
from .config import (
    ConfigError,
    TrainConfig,
    save_resolved,
    to_dict,
    validate_against,
    validate_launch,
)
from .data import (
    build_loader,
    check_loader_size,
    encoder_inputs,
    input_contract,
    prepare_batch,
    radiometric_jitter,
)
from .determinism import deterministic_algorithms, mask_seed, seed_rank_streams
from .encoders import INIT_ORIGIN, init_origin
from .metrics import (
    JsonlLogger,
    Throughput,
    mean_outputs,
    mfu,
    peak_memory_mb,
    progress_bar,
    scalar_outputs,
    setup_logging,
    tensorboard_writer,
    train_flops_per_sample,
)
from .objectives import build_objective
from .optim import NonFiniteGuard
from .preemption import (
    REQUEUE_EXIT_CODE,
    PreemptionHandler,
    StopRequested,
    clear_requeue_marker,
    requeue_exit,
    who_stopped,
)
from .preview import ReconstructionPreview
from .resume import (
    drop_later_records,
    drop_removed_ranks_records,
    resume_elastic,
    sample_keys_path,
    warn_resume_changes,
)
from .schedules import Schedule
from .startup import (
    ensure_dataset_agreed,
    objective_config,
    out_dir_problem,
    stop_if_requested,
)
from .strategy import STEP_LOSS_KEYS, Strategy, wrap_model

log = logging.getLogger(__name__)

__all__ = ["Trainer", "run"]


class Trainer:
    """Everything one rank needs for a run; :meth:`fit` returns the process exit status.

    Process-wide state it changes, on purpose, for a run it owns (a program that embeds it
    should know): building it seeds torch's global RNG with ``data.seed`` (the same initial
    weights on every rank), then, once the model is built, with a seed of each rank's own
    (:func:`seed_rank_streams`: dropout and drop-path draws differ across ranks); a resumed
    :meth:`fit` sets the python, numpy and torch global RNG states to the checkpoint's (exact
    continuation). Only for the span of :meth:`fit`: ``runtime.deterministic`` turns torch's
    deterministic algorithms on, and SIGTERM, SIGUSR1 and SIGINT are caught
    (:class:`.preemption.PreemptionHandler`); both are restored when it returns or raises.
    Given ``preempt`` (an entered handler, :func:`run`'s), the signals are the caller's to
    catch, from before this is built: a stop requested while it builds raises
    :class:`.preemption.StopRequested` on every rank (they agree), and :meth:`fit` stops
    before its first step. Logging: :func:`.metrics.setup_logging`.
    """

    def __init__(self, cfg: TrainConfig, preempt: PreemptionHandler | None = None) -> None:
        self.cfg = cfg
        self.preempt = preempt
        self.env = dist.init_distributed()
        setup_logging(self.env.rank)
        self.device = dist.device_for(self.env)
        # everything that needs no data, at once, before a possibly long shard build
        validate_launch(cfg, world_size=self.env.world_size)
        if reason := out_dir_problem(cfg.runtime.out_dir, self.env.rank):
            raise ConfigError([f"runtime.out_dir: {reason}; checkpoints and metrics go there: "
                               f"choose a folder this job can write"])
        refuse_fresh_run_over_checkpoints(cfg)
        ensure_dataset_agreed(cfg, self.env.rank, preempt, self.device)
        if is_zarr(cfg.data.path):
            raise ConfigError([f"data.path: {cfg.data.path} is a zarr store (random access, for "
                               f"eofm-probe and eofm-finetune); pretraining streams webdataset "
                               f"shards: build them with `eofm-shard build SOURCE --out DIR` "
                               f"(without --format zarr)"])
        manifest = load_manifest(cfg.data.path)
        mods = manifest.modalities
        validate_against(cfg, world_size=self.env.world_size,
                         dataset_bands={m: i.bands for m, i in mods.items()},
                         canonical=lambda m, b: get_sensor(mods[m].sensor).canonical(b))
        self.loader, self.info = build_loader(cfg, self.env.rank, self.env.world_size,
                                              self.env.local_world_size)
        self.info = self.info.to_device(self.device)
        torch.manual_seed(cfg.data.seed)  # identical initial weights on every rank
        objective = build_objective(objective_config(cfg), self.info)
        check_loader_size(cfg, objective, self.info)
        self.objective = objective  # the unwrapped module: its hooks run on every rank
        self.encoder = objective.encoder
        self.encoder.contract = input_contract(
            cfg.objective.name, self.info, manifest, self.encoder, cfg.data.path,
            crop_size=cfg.data.crop_size,
            gsd_factor=float(getattr(objective, "input_gsd_factor", 1.0)))
        self.flops_per_sample = train_flops_per_sample(objective)
        # micro-batches over accumulation, not floored: the leftover micro-batches of an
        # epoch carry over into the next (epochs=10 at 15 micro-batches and accum 4 is 37.5
        # steps, 38; floored to 3 per epoch it was 30 steps, 8 epochs)
        steps_per_epoch = len(self.loader) / cfg.optim.accum_steps
        self.total, warmup = cfg.schedule.resolve(steps_per_epoch)  # refuses an all-warmup run
        self.lr_multiplier = float(getattr(objective, "lr_multiplier", 1.0))
        self.peak_lr = cfg.optim.peak_lr(cfg.data.batch_size) * self.lr_multiplier
        if self.lr_multiplier != 1.0:
            log.info("objective %s scales the peak lr by %.4g: %.4g", cfg.objective.name,
                     self.lr_multiplier, self.peak_lr)
        self.lrs = Schedule.warmup_cosine(self.peak_lr, self.peak_lr * cfg.schedule.final_lr_ratio,
                                          self.total, warmup)
        self._log_layout("start")
        self.strategy: Strategy = wrap_model(objective, cfg, self.env, self.device, self.peak_lr)
        # the weights are the same on every rank now (the same seed; DDP and DeepSpeed also
        # broadcast them, FSDP2 does not): from here on each rank draws its own dropout
        seed_rank_streams(cfg.data.seed, self.env.rank)
        stop_if_requested(preempt, self.device, "the model was built")
        self.out = Path(cfg.runtime.out_dir)
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.runtime.keep_last_k)
        self.guard = NonFiniteGuard(cfg.runtime.max_nonfinite_in_a_row)
        self.step = 0
        self.saved_step: int | None = None  # the step of the newest checkpoint this run wrote
        self.elapsed_before = 0.0  # training seconds of earlier runs of this job (resumes)
        self._t_fit = time.monotonic()
        self.metrics = JsonlLogger(self.out / cfg.logging.jsonl if cfg.logging.jsonl else None,
                                   enabled=self.env.rank == 0)
        self.tb: Any | None = None  # opened by _fit once the resumed step is known
        self.keys = JsonlLogger(sample_keys_path(self.out, self.env.rank),
                                enabled=cfg.logging.sample_keys)
        self.preview: ReconstructionPreview | None = None
        if cfg.logging.preview_every:
            if not any(callable(getattr(objective, h, None)) for h in ("reconstruct", "views")):
                raise ConfigError([f"logging.preview_every: objective {cfg.objective.name!r} "
                                   f"has neither reconstructions nor views to picture; set 0"])
            self.preview = ReconstructionPreview(
                self.out / "previews", self.info, manifest.modalities[self.info.modality],
                cfg.logging.preview_samples, cfg.data.seed, write=self.env.rank == 0)

    def _client_state(self, objective_files: list[bool]) -> dict[str, Any]:
        return {"step": self.step, "total_steps": self.total, "schedule": self.lrs.state_dict(),
                "elapsed_s": self.elapsed(),
                "data": dist.all_gather_object(self.loader.state_dict()),
                "rng": dist.all_gather_object(capture_rng()),
                "objective_files": objective_files,
                # no URL credentials in checkpoints (resume reads neither; eofm-export --data)
                "config": without_credentials(to_dict(self.cfg)),
                "nonfinite": self.guard.state_dict(),
                "contract": without_credentials(self.encoder.contract.to_dict()),
                # a local folder or a Hub repo, as the run read model.init_from (eofm-export)
                INIT_ORIGIN: init_origin(self.encoder, self.cfg.model.init_from),
                # the preview's samples, so a resumed run pictures the same ones (rank 0's)
                "preview": None if self.preview is None else self.preview.state_dict()}

    def _objective_state(self) -> dict[str, Any]:
        """This rank's ``client_state()`` of the objective (see ``objectives/base.py``)."""
        fn = getattr(self.objective, "client_state", None)
        return dict(fn()) if callable(fn) else {}

    def save(self) -> None:
        """Checkpoint the full training state at the current step.

        The objective's per-rank state goes to each rank's own file (not gathered: it can be a
        record per sample seen); the checkpoint, committed after every rank file is on disk,
        says which ranks wrote one.

        Collective: the ranks agree on each part's outcome (:func:`.checkpoint.agree_written`):
        when a rank's file or rank 0's checkpoint write fails (a full disk), every rank raises,
        none takes the step as saved. With ``runtime.async_checkpoint`` rank 0's write goes on
        in the background: :meth:`_wait_written` agrees on it.
        """
        own = self._objective_state()
        error = None
        if own:
            try:
                self.ckpt.save_rank_state(own, self.step)
            except Exception as e:  # agreed below: nothing is committed, every rank raises
                error = e
        # also the barrier before the commit
        files = agree_written(error, self.ckpt.directory, self.step, payload=bool(own))
        client = self._client_state(files)
        error = None
        try:
            self.strategy.save(self.ckpt, self.step, client)
        except Exception as e:
            # DeepSpeed's save runs collectives of its own: a rank that failed inside it cannot
            # meet the others here (save_deepspeed agrees on what it can itself)
            if self.strategy.kind == "deepspeed":
                raise
            error = e  # rank 0's write (or the previous background write's error)
        agree_written(error, self.ckpt.directory, self.step)
        self.ckpt.prune_rank_states(self.env.world_size, pending=self.step)
        self.saved_step = self.step

    def _wait_written(self) -> None:
        """Wait for rank 0's background checkpoint write (``runtime.async_checkpoint``); every
        rank raises when it failed (collective then: :func:`.checkpoint.agree_written`, also a
        barrier), so no rank reports it written nor asks for a requeue."""
        if not self.cfg.runtime.async_checkpoint:
            self.ckpt.wait()  # nothing is written in the background: returns at once
            return
        error = None
        try:
            self.ckpt.wait()  # rank 0's; the other ranks have none
        except Exception as e:
            error = e
        agree_written(error, self.ckpt.directory, self.saved_step)

    def resume(self) -> None:
        """Continue from the newest complete checkpoint in ``out_dir``, if any.

        The records of the steps after it (run again) leave the metrics file and each rank's
        sample-key file; after an elastic resume onto fewer ranks, rank 0 also removes them
        from the files of the ranks that are gone (:func:`.resume.drop_removed_ranks_records`),
        so each step's samples are recorded once."""
        client = self.strategy.load(self.ckpt) if self.cfg.runtime.resume else None
        if client is not None:
            self.step = int(client["step"])
            self.elapsed_before = float(client.get("elapsed_s", 0.0))
        for records in (self.metrics, self.keys):  # steps after the checkpoint come again
            drop_later_records(records, self.step)
        if client is None:
            self._drop_removed_ranks_keys()  # a launch with more ranks died before a checkpoint
            return
        rank, world, old_world = self.env.rank, self.env.world_size, len(client["data"])
        changed = None
        if old_world != world:
            changed = (f"checkpoint was written by {old_world} ranks; this job has {world}: "
                       f"the data position cannot be kept exact")
        else:
            try:
                self.loader.load_state_dict(client["data"][rank],
                                            history=client["data"][0].get("history"))
            except ValueError as e:  # e.g. another data.num_workers
                changed = str(e)
        if changed:
            resume_elastic(self.loader, client["data"], changed,
                           allowed=self.cfg.runtime.resume_elastic, world_size=world,
                           log_layout=self._log_layout)
        self._drop_removed_ranks_keys()  # once an elastic resume is accepted
        if rank < old_world:
            restore_rng(client["rng"][rank])
        self.guard.load_state_dict(client.get("nonfinite", {}))
        # older checkpoints saved only the total; a changed schedule is allowed (a longer run),
        # but said: the lr curve is recomputed for the new length from this step on, and stage
        # boundaries given as fractions of the run (SelectiveMAE's selection stages) move too
        self.lrs.load_state_dict(client.get("schedule") or {"total_steps": client["total_steps"]},
                                 self.step)
        warn_resume_changes(client, to_dict(self.cfg), self.encoder.contract.to_dict(),
                            self.step)
        if old_world != world:  # per-rank state belongs to the old ranks' samples
            self._hook("load_client_state", {})
        elif "objective_files" in client:
            own = client["objective_files"][rank]
            self._hook("load_client_state", self.ckpt.load_rank_state(self.step) if own else {})
        elif "objective" in client:  # older checkpoints: every rank's state inline
            self._hook("load_client_state", client["objective"][rank])
        if self.preview is not None:
            self.preview.load_state_dict(client.get("preview"), self.device)
        then = client.get("config") if isinstance(client.get("config"), dict) else {}
        if (client.get(INIT_ORIGIN) is not None and self.cfg.model.init_from
                and (then.get("model") or {}).get("init_from") == self.cfg.model.init_from):
            # the lineage as the first launch read it, not as this working directory sees it
            self.encoder.init_origin = dict(client[INIT_ORIGIN])
        log.info("resumed from step %d (epoch %d)", self.step, self.loader.epoch)

    def _drop_removed_ranks_keys(self) -> None:
        """Rank 0, with ``logging.sample_keys``: the records after the resumed step in the
        sample-key files of ranks this job does not have (an earlier launch had more), whose
        steps this job's ranks read again (:func:`.resume.drop_removed_ranks_records`)."""
        if self.env.rank == 0 and self.cfg.logging.sample_keys:
            drop_removed_ranks_records(self.out, self.step, self.env.world_size)

    def _log_layout(self, when: str) -> None:
        """Log what a step holds and its lr: at the start and after an elastic resume (the
        global batch and lr stay; the micro-batch follows the world size)."""
        c = self.cfg
        log.info("batch layout (%s): global batch %d = %d ranks x %d micro-batch x %d "
                 "accum_steps, %d data-loader workers per rank; peak lr %.4g; %.4g steps per "
                 "epoch", when, c.data.batch_size, self.env.world_size, self.loader.batch_size,
                 c.optim.accum_steps, self.loader.num_workers, self.peak_lr,
                 len(self.loader) / c.optim.accum_steps)

    def elapsed(self) -> float:
        """Wall-clock seconds this job has trained, over every run of it (rank 0's clock)."""
        return self.elapsed_before + time.monotonic() - self._t_fit

    def _out_of_time(self) -> bool:
        """Whether the wall-clock budget is spent: the run's training time over every launch
        (:meth:`elapsed`, ``elapsed_s`` in the metrics), on rank 0's clock (rank 0 alone
        answers: the loop's per-step stop all-reduce tells the others)."""
        return self.env.rank == 0 and self.cfg.runtime.budget_spent(self.elapsed())

    def _hook(self, name: str, *args: Any) -> None:
        """Call the objective's optional hook ``name`` (see ``objectives/base.py``)."""
        fn = getattr(self.objective, name, None)
        if callable(fn):
            fn(*args)

    def _encoder_inputs(self, batch: dict) -> dict[str, Any]:
        """:func:`.data.encoder_inputs` of this run's encoder for ``batch``."""
        return encoder_inputs(self.info, batch, self.device,
                              spectral=self.cfg.model.tokenizer == "spectral",
                              gsd_aware=bool(getattr(self.encoder, "gsd_pos", False)))

    def _inputs(self, batch: dict) -> dict[str, Any]:
        """The objective's own batch entries, the spectral tokenizer's band codes and the
        GSD of a GSD-aware encoder."""
        fn = getattr(self.objective, "batch_inputs", None)
        extra = dict(fn(batch, self.device)) if callable(fn) else {}
        return {**extra, **self._encoder_inputs(batch)}

    def _batches(self):
        while True:
            yield from self.loader

    def fit(self) -> int:
        """Train to ``total`` steps; 0 when done, ``REQUEUE_EXIT_CODE`` when preempted (also
        when the stop was requested before the first step: then nothing is trained or saved).

        An exception (a second Ctrl-C, a failed write) propagates unchanged, after a background
        checkpoint write has finished and the metric files are closed."""
        with deterministic_algorithms(self.cfg.runtime.deterministic):
            try:
                if self.preempt is not None:  # the caller's, entered before this was built
                    return self._fit(self.preempt)
                with PreemptionHandler() as preempt:
                    return self._fit(preempt)
            except BaseException:
                self._abandon()
                raise

    def _abandon(self) -> None:
        """Wait for a background checkpoint write (its error is logged: another exception is
        on its way) and close the metric files, so nothing writes after :meth:`fit` raised."""
        self.ckpt.settle()
        self.metrics.close()
        self.keys.close()
        if self.tb is not None:
            self.tb.close()

    def _fit(self, preempt: PreemptionHandler) -> int:
        cfg = self.cfg
        if self.env.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            clear_requeue_marker(self.out)
        self.resume()
        if self.env.rank == 0:  # after resume: a refused one keeps the config.yaml it names
            save_resolved(cfg, self.out)
        self.tb = tensorboard_writer(self.out / "tensorboard",
                                     enabled=cfg.logging.tensorboard and self.env.rank == 0,
                                     purge_step=self.step + 1 if self.step else None)
        self._t_fit = time.monotonic()
        meter = Throughput(tokens_per_sample=self.encoder.num_tokens)
        data = self._batches()
        accum = cfg.optim.accum_steps
        every = max(1, cfg.logging.log_every)
        bar = progress_bar(self.total, self.step, enabled=cfg.logging.progress and self.env.rank == 0)
        first_step = self.step
        # the same answer on every rank: the resumed elapsed_s is rank 0's, from the checkpoint
        spent = self.step < self.total and cfg.runtime.budget_spent(self.elapsed_before)
        if spent:  # no step is trained and nothing is saved
            log.warning("runtime.max_minutes=%s was spent by earlier launches of this run "
                        "(%.1f training minutes) at step %d of %d: nothing to train; raise "
                        "runtime.max_minutes to go on", cfg.runtime.max_minutes,
                        self.elapsed_before / 60.0, self.step, self.total)
        elif self.step >= self.total > 0:
            log.info("the run is finished (step %d of %d): nothing to train; raise "
                     "schedule.steps (or schedule.epochs) to go on", self.step, self.total)
        # a stop requested while the job started (the model, the checkpoint load): nothing new
        # to checkpoint (the state is the one just resumed, or step 0, which the requeued job
        # builds again the same way)
        stopped = dist.any_across_ranks(preempt.should_stop, self.device)
        if stopped:
            self._requeue(f"stop requested before the first step ({who_stopped(preempt)}): "
                          f"nothing new to checkpoint")
        while not stopped and not spent and self.step < self.total:
            self.strategy.set_lr(float(self.lrs[self.step]))
            self._hook("on_step_start", self.step, self.total)
            losses, keys = [], []
            log_now = (self.step + 1) % every == 0 or self.step + 1 == self.total
            diags: list[dict[str, Tensor]] = []  # the objective's scalars, when logging
            for micro in range(accum):
                t_wait = time.perf_counter()
                batch = next(data)  # data wait = time blocked on the loader only
                meter.data_wait(time.perf_counter() - t_wait, len(batch["__key__"]))
                keys += batch["__key__"]
                x, valid = prepare_batch(batch, self.info, self.device)  # device-side work
                if self.preview is not None and self.preview.kept is None:
                    self.preview.keep(x, valid, self._encoder_inputs(batch))
                gen = torch.Generator(device=self.device).manual_seed(
                    mask_seed(cfg.data.seed, self.step, self.env.rank, micro))
                x = radiometric_jitter(x, valid, cfg.data.jitter_gain,
                                       cfg.data.jitter_shift, gen)
                kw = self._inputs(batch)

                def fwd(m: nn.Module, x: Tensor = x, v: Tensor = valid,
                        g: torch.Generator = gen, kw: dict = kw,
                        sink: list | None = diags if log_now else None
                        ) -> Tensor | dict[str, Any]:
                    out = m(x, v, generator=g, **kw)
                    if sink is not None:  # the step's sums are not diagnostics of their own
                        sink.append({k: t for k, t in scalar_outputs(out).items()
                                     if k not in STEP_LOSS_KEYS})
                    # optim.loss_norm=step: the strategy reads the sums beside the loss
                    return out if self.strategy.step_norm else out["loss"]

                losses.append(self.strategy.forward_backward(fwd, last=micro == accum - 1))
            norm, stepped = self.strategy.finish_step()
            if stepped:
                self._hook("on_step_end", self.step, self.total)
            loss = torch.stack(losses).mean()
            self.step += 1
            empty = self._nothing_scored()
            meter.step_done()
            self.keys.log({"step": self.step, "epoch": self.loader.epoch, "keys": keys})
            if log_now:
                loss_v = self._step_loss(loss)
                self.guard.update((stepped or empty) and math.isfinite(loss_v), self.step)
                self._log_step(loss_v, norm, meter, diags)
                bar.set_postfix(loss=f"{loss_v:.4f}")
            else:
                self.guard.update(stepped or empty, self.step)
            if self.preview is not None and (self.step % cfg.logging.preview_every == 0
                                             or self.step == self.total):
                self._write_preview()
            bar.update(1)
            # every rank must agree to stop at the same step: one tiny all-reduce per step for
            # a signal (it may reach only some ranks, and SLURM's warning is short) and the
            # wall-clock budget (rank 0's clock) together; which one, only on the step it stops
            # (the last step: the run is finished, whatever the clock or a signal says; it is
            # saved below and exits 0, not requeued to find nothing to train)
            if self.step < self.total and dist.any_across_ranks(
                    preempt.should_stop or self._out_of_time(), self.device):
                if dist.any_across_ranks(preempt.should_stop, self.device):
                    self.save()
                    self._wait_written()  # written, on every rank's word, before a requeue
                    self._requeue(f"stop requested: checkpoint at step {self.step} written")
                    stopped = True
                    break
                log.warning("runtime.max_minutes=%s spent at step %d of %d (training time "
                            "over every launch of this run): stopping; raise "
                            "runtime.max_minutes and run again to go on",
                            cfg.runtime.max_minutes, self.step, self.total)
                # the last step is recorded and pictured as a finished run's last step is
                if not log_now:  # (every rank takes this branch: the collectives match)
                    self._log_step(self._step_loss(loss), norm, meter, diags)
                if self.preview is not None and self.step % cfg.logging.preview_every:
                    self._write_preview()
                break  # the final checkpoint below is written as for a finished run
            ckpt_every = cfg.runtime.ckpt_every
            if ckpt_every and self.step % ckpt_every == 0:
                self.save()
        bar.close()
        # a finished run run again saves nothing; nor a last step ckpt_every saved already
        if not stopped and self.step > first_step and self.saved_step != self.step:
            self.save()
        self._wait_written()  # async: also the barrier before the rank files' prune below
        if self.cfg.runtime.async_checkpoint:  # the background write pruned checkpoints after
            # save() pruned rank files: theirs go now; the newest is kept even where this
            # rank's listing of a shared folder does not show rank 0's file yet (NFS lag)
            self.ckpt.prune_rank_states(self.env.world_size, pending=self.saved_step)
        self.metrics.close()
        self.keys.close()
        if self.tb is not None:
            self.tb.close()
        return REQUEUE_EXIT_CODE if stopped else 0

    def _step_loss(self, micro_mean: Tensor) -> float:
        """The loss logged for the step just taken. ``optim.loss_norm=step``: the step's own,
        the summed loss of every scored unit of every micro-batch and rank over their count
        (0 when none was scored; the strategy reduced it over ranks already). Otherwise
        ``micro_mean`` (this rank's mean of its micro-batches' losses) averaged over ranks, a
        collective every rank calls."""
        if self.strategy.step_norm and self.strategy.step_loss is not None:
            return float(self.strategy.step_loss)
        return float(dist.all_reduce_mean(micro_mean.to(self.device)))

    def _nothing_scored(self) -> bool:
        """Whether the step just finished scored no unit on any rank (``optim.loss_norm=step``:
        the strategy took no optimiser step; every target was nodata or cloud). Said in a
        warning; not a non-finite step (``skipped_steps`` and ``max_nonfinite_in_a_row`` count
        those): the step and the lr schedule move on as after a skipped one."""
        if not (self.strategy.step_norm and self.strategy.step_count == 0):
            return False
        log.warning("step %d: no token was scored on any rank (every reconstruction target "
                    "nodata or cloud): the optimiser step is not taken (optim.loss_norm=step)",
                    self.step)
        return True

    def _log_step(self, loss: float, norm: Tensor | float, meter: Throughput,
                  diags: list[dict[str, Tensor]]) -> None:
        """Write the metrics record of the step just taken (every rank calls it: the
        objective's scalars are averaged across ranks; rank 0 writes)."""
        rec = {"step": self.step, "epoch": self.loader.epoch,
               "elapsed_s": round(self.elapsed(), 3), "loss": loss,
               "lr": float(self.lrs[self.step - 1]), "grad_norm": float(norm),
               "skipped_steps": self.guard.skipped,
               **meter.summary(), "peak_mem_mb": peak_memory_mb(self.device)}
        names, means = mean_outputs(diags, self.device)
        if means is not None:  # every rank's objective gives the same names
            means = dist.all_reduce_mean(means)
            rec.update({n: float(v) for n, v in zip(names, means.tolist(), strict=True)
                        if n not in rec})
        if self.device.type == "cuda":
            local = rec.get("samples_per_s", 0.0) / self.env.world_size
            rec["mfu"] = mfu(self.flops_per_sample * local, 1.0, self.device)
        self.metrics.log(rec)
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, self.step)

    def _write_preview(self) -> None:
        """The reconstruction pictures at this step (logging.preview_every), if any."""
        if self.preview is None:
            return
        with self.strategy.whole_weights(), self.strategy.module_autocast():
            written = self.preview.write(self.objective, self.step)
        if written is not None:
            log.info("pictures at step %d: %s", self.step, written)

    def _requeue(self, what: str) -> None:
        """Write the requeue marker (each node's first rank) and say why the job stops."""
        requeue_exit(self.env.rank, self.env.local_rank, self.out, what)


def run(cfg: TrainConfig) -> int:
    """Train with ``cfg`` and tear the process group down; returns the exit status.

    SIGTERM, SIGUSR1 and a first Ctrl-C are caught from the start (restored when it returns):
    a stop requested while the job starts (the dataset build, the model, the checkpoint load)
    ends it with the requeue status and the requeue marker, as one during training does."""
    with PreemptionHandler() as preempt:
        try:
            trainer = Trainer(cfg, preempt=preempt)
        except StopRequested as e:  # every rank agreed (.startup.stop_if_requested)
            try:
                return requeue_exit(dist.get_rank(), dist.get_local_rank(),
                                      cfg.runtime.out_dir, f"{e}: nothing trained or saved")
            finally:
                dist.teardown()
        try:
            return trainer.fit()
        except StopRequested as e:  # e.g. a stop that cut the resume's universal conversion
            return requeue_exit(trainer.env.rank, trainer.env.local_rank, cfg.runtime.out_dir,
                                f"{e}: nothing trained or saved")
        finally:
            dist.teardown()
