"""``wrap_model``: one interface over single-process, DDP, FSDP2 and DeepSpeed ZeRO training.

The loop calls, per optimiser step: ``set_lr``; ``forward_backward(fn, last)`` for each
micro-step (no gradient all-reduce except on the ``last`` one); ``finish_step()`` (clip, check
finiteness, step or skip). Checkpoints go through ``save``/``load`` so DeepSpeed keeps its own
sharded format behind the same interface.

``optim.loss_norm`` decides what a step's gradient is the gradient of. ``micro_batch``: the
mean over micro-steps and ranks of each micro-batch's own loss (``loss / accum_steps`` is
backpropagated, and DDP/FSDP2 average ranks). ``step``: the sum of every scored unit's loss
over the step's micro-batches and ranks over their global count; ``fn`` then returns the
objective's output with ``loss_sum`` and ``loss_count`` (:data:`STEP_LOSS_KEYS`), the sums are
backpropagated as they are, and ``finish_step`` scales the gradients by the count (one host
all-reduce of the count per step), so the gradient does not depend on how the global batch is
split into micro-batches and ranks, also when nodata leaves them different counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from .checkpoint import CheckpointManager, load_deepspeed, save_deepspeed, snapshot
from .config import ConfigError, TrainConfig, deepspeed_json_problems, micro_batch
from .config_checks import loss_norm_problems
from .distributed import DistEnv
from .optim import build_optimizer, clip_and_check
from .state_fit import (
    keep_configured_hparams,
    keyed_by_name,
    model_fit_problems,
    optimizer_fit_problems,
    optimizer_hparams,
    refuse_other_kind,
)

# ``fn(model)``: the loss (optim.loss_norm=micro_batch; a mapping with "loss" too), or the
# objective's output with STEP_LOSS_KEYS (optim.loss_norm=step)
LossFn = Callable[[nn.Module], "Tensor | Mapping[str, Any]"]
STEP_LOSS_KEYS = ("loss_sum", "loss_count")  # what optim.loss_norm=step reads of an output
log = logging.getLogger(__name__)


def step_terms(out: Tensor | Mapping[str, Any], objective: str) -> tuple[Tensor, Tensor]:
    """``(loss_sum, loss_count)`` of an objective's output under ``optim.loss_norm=step``; a
    :class:`ConfigError` when the output has no such terms (an objective whose loss is not a
    sum over scored units: ``objective`` names it in the message)."""
    missing = [k for k in STEP_LOSS_KEYS if not isinstance(out, Mapping) or k not in out]
    if missing:
        got = sorted(out) if isinstance(out, Mapping) else f"a {type(out).__name__}"
        raise ConfigError([f"optim.loss_norm: 'step' needs the objective's output to hold "
                           f"{list(STEP_LOSS_KEYS)} (mae and selectivemae return them); "
                           f"objective {objective!r} gave {got}, without {missing}; set "
                           f"optim.loss_norm=micro_batch"])
    assert isinstance(out, Mapping)
    return out["loss_sum"], out["loss_count"]


def averaging_ranks(kind: str) -> int:
    """How many ranks DDP or FSDP2 (``kind``) average each gradient over: the default group's
    size; 1 for a single process."""
    import torch.distributed as tdist

    if kind not in ("ddp", "fsdp2") or not tdist.is_initialized():
        return 1
    return tdist.get_world_size()


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast (``bf16``; ``auto`` on a GPU with native bf16, Ampere and later), else
    None: fp32 on CPU, on older GPUs (V100, T4: bf16 there is emulated, slower than fp32) with
    ``auto``, and when ``fp32`` is asked for."""
    p = cfg.runtime.precision
    if p == "fp32" or (p == "auto" and not _native_bf16(device)):
        return None
    return torch.bfloat16


def _native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a GPU whose hardware computes in bf16."""
    if device.type != "cuda":
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no including_emulation and does not count emulation
        return torch.cuda.is_bf16_supported()


def compile_model(module: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` every transformer block of ``module`` in place, then the objective's
    own hot paths (its optional ``compile_extras(backend)`` hook); how many blocks. ``backend``
    (``runtime.compile_backend``): torch.compile's, inductor by default.

    Blocks (encoder and decoder, self- and cross-attention) are where the kernels are, and
    each compiles to a few fused kernels instead of dozens of small ones: the fix for steps that
    are bound by launching kernels rather than by arithmetic. Compiling blocks, not the whole
    objective, leaves masking, token selection and losses eager (their random draws and
    data-dependent shapes would break the graph) and keeps parameter names unchanged, so
    checkpoints and exports are the same as without it. Blocks of one shape share one compiled
    graph; the first steps pay the compile time.

    Shapes are static (``dynamic=False``): a run's token counts are fixed (full batches, fixed
    mask ratios), but encoder and decoder blocks share one ``forward`` with different token
    counts, and by default the second count makes torch mark the token axis dynamic, trading
    the fixed-shape kernels for general ones (seen on an H200 as compiled steps slower than
    eager ones). Each shape gets its own graph instead.
    """
    from eofm.models.decoders import CrossAttentionBlock
    from eofm.models.vit import Block

    blocks = [m for m in module.modules() if isinstance(m, (Block, CrossAttentionBlock))]
    for blk in blocks:
        blk.compile(dynamic=False, backend=backend)
    extras = getattr(module, "compile_extras", None)
    if callable(extras):
        extras(backend)
    log.info("runtime.compile: %d transformer blocks compiled with torch.compile (backend "
             "%s)%s", len(blocks), backend,
             " (and the objective's extras)" if callable(extras) else "")
    return len(blocks)


class Strategy:
    """Single process, DDP or FSDP2 around an objective module."""

    step_norm = False  # optim.loss_norm=step (set in __init__)
    step_loss: float | None = None  # the last step's loss over every rank (loss_norm=step)
    step_count: float | None = None  # the last step's scored units over every rank (ditto)

    def __init__(self, module: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device,
                 lr: float) -> None:
        self.cfg, self.env, self.device = cfg, env, device
        self.module = module.to(device)
        self.kind = cfg.runtime.strategy if env.world_size > 1 else "single"
        if cfg.runtime.compile:
            compile_model(self.module, cfg.runtime.compile_backend)
        if self.kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.model: nn.Module = DistributedDataParallel(self.module, device_ids=ids)
        elif self.kind == "fsdp2":
            from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

            for blk in getattr(getattr(self.module, "encoder", self.module), "blocks", []):
                fully_shard(blk)
            self.model = fully_shard(self.module)
            if callable(getattr(self.module, "reconstruct", None)):  # previews gather weights
                register_fsdp_forward_method(self.module, "reconstruct")
        else:
            self.model = self.module
        self.optimizer = build_optimizer(self.module, cfg.optim, lr)
        self.amp = autocast_dtype(cfg, device)
        # optim.loss_norm=step (getattr: a config section without the field normalises per
        # micro-batch): this step's local sums so far, and the last finished step's results
        self.step_norm = getattr(cfg.optim, "loss_norm", "micro_batch") == "step"
        self._sums: list[Tensor] = []  # per micro-step: (loss_sum, loss_count), detached

    def set_lr(self, lr: float) -> None:
        """Learning rate of every parameter group for the coming step (times the group's
        ``lr_scale``, e.g. from layer-wise decay)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def whole_weights(self) -> contextlib.AbstractContextManager[Any]:
        """Within it the module's own methods see every weight whole on every rank (every
        rank must enter it): nothing to do here; FSDP2 gathers in its registered methods."""
        return contextlib.nullcontext()

    def module_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """What the module's own methods (previews) run under, outside :meth:`forward_backward`:
        nothing here, the weights are fp32 (DeepSpeed's bf16 weights need autocast)."""
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        if last or self.kind not in ("ddp", "fsdp2"):
            return contextlib.nullcontext()
        if self.kind == "ddp":
            return self.model.no_sync()
        self.model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()

    def forward_backward(self, fn: LossFn, last: bool) -> Tensor:
        """Run ``fn(model)`` and backpropagate; returns the micro-batch's loss (detached).

        ``optim.loss_norm=micro_batch``: ``fn`` returns the loss (or a mapping with ``loss``),
        and ``loss / accum_steps`` is backpropagated. ``step``: ``fn`` returns the objective's
        output; its ``loss_sum`` is backpropagated as it is and its ``loss_count`` kept for
        :meth:`finish_step` (a :class:`ConfigError` when it has neither: :func:`step_terms`)."""
        if self.kind == "fsdp2" and last:
            self.model.set_requires_gradient_sync(True)
        with self._no_sync(last), torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                                 enabled=self.amp is not None):
            out = fn(self.model)
            if self.step_norm:
                loss_sum, count = step_terms(out, self._loss_owner())
                loss_sum.backward()
                self._sums.append(torch.stack([loss_sum.detach().double(),
                                               count.detach().double()]))
            else:
                loss = out if isinstance(out, Tensor) else out["loss"]
                (loss / self.cfg.optim.accum_steps).backward()
        return (out if isinstance(out, Tensor) else out["loss"]).detach()

    def _loss_owner(self) -> str:
        """What gives the loss, for messages: ``objective.name`` (fine-tuning: its task)."""
        objective = getattr(self.cfg, "objective", None)
        if objective is not None:
            return str(objective.name)
        task = getattr(getattr(self.cfg, "task", None), "kind", None)
        return f"fine-tuning {task}" if task else "fine-tuning"

    def _normalise_step(self, params: list[nn.Parameter]) -> bool:
        """``optim.loss_norm=step``: sum this step's loss sums and counts over ranks (one host
        all-reduce), set :attr:`step_loss` and :attr:`step_count`, and scale every gradient by
        ``ranks / count`` (DDP and FSDP2 averaged the ranks' gradients: this makes them the sum
        over every rank over the global count). False when no unit was scored on any rank:
        nothing to learn from, the gradients are zero and the step is not taken."""
        local = torch.stack(self._sums).sum(0).tolist() if self._sums else [0.0, 0.0]
        self._sums = []
        total, count = distributed.sum_across_ranks(local)
        self.step_count = count
        self.step_loss = total / count if count > 0 else 0.0
        if count <= 0:
            return False
        grads = [p.grad for p in params]
        if grads:
            torch._foreach_mul_(grads, averaging_ranks(self.kind) / count)
        return True

    def finish_step(self) -> tuple[Tensor, bool]:
        """Clip, and step only when the gradient is finite; returns (grad norm, stepped).

        ``optim.loss_norm=step``: first the gradients are normalised by the step's global
        count of scored units (:meth:`_normalise_step`); a step without any is not taken
        (norm 0, not stepped, :attr:`step_count` 0: the trainer does not count it as a
        non-finite step)."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.step_norm and not self._normalise_step(params):
            self.optimizer.zero_grad(set_to_none=True)
            return torch.as_tensor(0.0), False
        norm, finite = clip_and_check(params, self.cfg.optim.grad_clip)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return torch.as_tensor(norm), finite

    def state_dict(self) -> dict[str, Any]:
        """Full (unsharded) model and optimiser state."""
        if self.kind == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            model, optim = get_state_dict(self.model, self.optimizer, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))
            return {"model": model, "optimizer": optim}
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (FSDP2: also a one-process or DDP
        checkpoint, whose optimiser state numbers the parameters: :func:`keyed_by_name`)."""
        if self.kind == "fsdp2":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            optim = keyed_by_name(state["optimizer"], self.optimizer.param_groups, self.module)
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=optim, options=options)
            return
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, manager: CheckpointManager, step: int, client: dict[str, Any]) -> None:
        """Checkpoint model, optimiser and ``client`` state (written by rank 0)."""
        state = self.state_dict()
        if self.env.rank != 0:
            return
        if self.cfg.runtime.async_checkpoint:
            manager.save_async(snapshot({**state, **client}), step)
        else:
            manager.save({**state, **client}, step)

    def load(self, manager: CheckpointManager) -> dict[str, Any] | None:
        """Restore the newest complete checkpoint; returns its client state, or None.

        Every rank restores the same one (:meth:`CheckpointManager.load_latest` is collective:
        a file one rank cannot read is passed over by all). Whether it fits this job is decided
        before loading (:meth:`fit_problems`, from the file and this job's model and optimiser
        alone, so every rank reaches the same verdict): a misfit is a :class:`ConfigError`
        naming the differences; any error while loading (out of memory, a failed collective)
        propagates unchanged."""
        refuse_other_kind(manager, deepspeed=False, strategy=self.cfg.runtime.strategy)
        found = manager.load_latest()  # falls back past a damaged newest file
        if found is None:
            return None
        path, state = found
        problems = self.fit_problems(state)
        if problems:
            raise ConfigError([
                f"runtime.resume: {path} does not fit this job: {'; '.join(problems)}. The "
                f"model, objective or optimiser parameter grouping (weight decay, layer-wise lr) "
                f"differs from the run that wrote it (a changed config, or an eofm version that "
                f"groups parameters differently). Resume with the config it was written with "
                f"({manager.directory.parent / 'config.yaml'}), or start a new run from its "
                f"weights: eofm-export the run, then model.init_from=EXPORT"])
        configured = optimizer_hparams(self.optimizer.param_groups)
        self.load_state_dict(state)  # restores the checkpoint's hyper-parameters too
        keep_configured_hparams(self.optimizer.param_groups, configured)
        return {k: v for k, v in state.items() if k not in ("model", "optimizer")}

    def fit_problems(self, state: dict[str, Any]) -> list[str]:
        """How a checkpoint's ``model`` and ``optimizer`` differ from this job's (empty: it
        fits): model keys and tensor shapes (what a strict ``load_state_dict`` checks), the
        optimiser's parameter groups and their sizes, and the shapes of its per-parameter state.
        Reads no other rank (shapes are global, also under FSDP2)."""
        model, optim = state.get("model"), state.get("optimizer")
        if not isinstance(model, dict) or not isinstance(optim, dict):
            return [f"expected 'model' and 'optimizer' state dicts, found keys "
                    f"{sorted(state)[:8]}"]
        return (model_fit_problems(model, self.module.state_dict())
                + optimizer_fit_problems(optim, self.optimizer.param_groups))


def _disable_deepspeed_shm() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce op on CPU (~75 s); gloo suffices.

    The module is taken by name: ``import deepspeed.comm.torch as m`` would bind the attribute
    ``deepspeed.comm.torch``, which is the torch package itself (deepspeed.comm imports it)."""
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO 1/2/3 with a torch AdamW (no JIT-compiled DeepSpeed optimiser)."""

    def __init__(self, module: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device,
                 lr: float) -> None:
        if getattr(cfg.optim, "loss_norm", "micro_batch") == "step":  # as the config checks say
            raise ConfigError(loss_norm_problems(cfg))
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from deepspeed.checkpoint import constants as ds_ckpt

        if device.type == "cpu":
            _disable_deepspeed_shm()
        self.cfg, self.env, self.device, self.kind = cfg, env, device, "deepspeed"
        self.amp = autocast_dtype(cfg, device)
        # DeepSpeed needs LOCAL_RANK (srun alone does not set it) and a group even for one rank
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
        distributed.ensure_process_group(device)
        self.module = module.to(device)
        if cfg.runtime.compile:
            compile_model(self.module, cfg.runtime.compile_backend)
        # saved with every checkpoint, so ds_to_universal can convert it for another world size
        version = ds_ckpt.UNIVERSAL_CHECKPOINT_VERSION_VALUE
        info = {ds_ckpt.UNIVERSAL_CHECKPOINT_VERSION_KEY: version}
        setattr(self.module, ds_ckpt.UNIVERSAL_CHECKPOINT_INFO, info)
        optimizer = build_optimizer(self.module, cfg.optim, lr)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.module, optimizer=optimizer, config=self.ds_config(cfg, env),
            dist_init_required=False)
        self.model = self.engine

    @staticmethod
    def ds_config(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
        """The DeepSpeed JSON: ``runtime.deepspeed_config`` merged with what the run fixes.

        A JSON that is unreadable, not an object, sets another ZeRO stage than
        ``runtime.zero_stage``, or a batch, micro-batch (on ``env.world_size`` ranks),
        accumulation or clipping value other than the run's, or a section the run owns (an
        optimizer or scheduler; an fp16, bf16 or torch_autocast section that is on) is a
        :class:`ConfigError`, from the same check as the launch's
        (:func:`~eofm.pretrain.config.deepspeed_json_problems`).
        """
        problems = deepspeed_json_problems(cfg, env.world_size)
        if problems:
            raise ConfigError(problems)
        base: dict[str, Any] = {}
        if cfg.runtime.deepspeed_config:
            base = json.loads(Path(cfg.runtime.deepspeed_config).read_text())
        micro = micro_batch(cfg, env.world_size)
        base.update({
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": cfg.optim.accum_steps,
            "train_batch_size": cfg.data.batch_size,
            "gradient_clipping": cfg.optim.grad_clip or 0.0,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
        })
        zero = dict(base.get("zero_optimization", {}))
        zero["stage"] = cfg.runtime.zero_stage
        base["zero_optimization"] = zero
        # Mixed precision as under DDP: fp32 weights, the forward under bf16 autocast. The
        # engine's forward switches off an autocast it finds on (on GPU it always finds the
        # trainer's) unless its torch_autocast section is on; DeepSpeed's own bf16 mode would
        # hold bf16 weights that fp32 inputs cannot meet. No module's gradients are reduced in
        # bf16 (lower_precision_safe_modules: none), so the reduction matches DDP's.
        amp = autocast_dtype(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        base["bf16"] = {"enabled": False}
        base["fp16"] = {"enabled": False}
        base["torch_autocast"] = {"enabled": amp is not None, "dtype": "bfloat16",
                                  "lower_precision_safe_modules": []}
        return base

    def whole_weights(self) -> contextlib.AbstractContextManager[Any]:
        """ZeRO-3: every rank gathers the partitioned weights (read-only) for the duration,
        a collective every rank must enter; ZeRO-1/2 keep them whole already."""
        if self.cfg.runtime.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module.parameters()))

    def module_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when the run is bf16, for the module's own methods (previews) and
        the forward; inside the engine's forward DeepSpeed's ``torch_autocast`` keeps it on."""
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                              enabled=self.amp is not None)

    def set_lr(self, lr: float) -> None:
        """Learning rate for the coming step (times each group's ``lr_scale``)."""
        for g in self.engine.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def forward_backward(self, fn: LossFn, last: bool) -> Tensor:
        """Forward, ``engine.backward`` and ``engine.step`` (DeepSpeed counts micro-steps).

        With bf16 (:func:`autocast_dtype`) the forward runs under bf16 autocast with fp32
        weights, as the other strategies' does (:meth:`ds_config`): matmuls and convolutions
        take bf16, and a loss that compares predictions with fp32 targets (the reconstruction
        losses) is computed in fp32."""
        with self.module_autocast():
            loss = fn(self.engine)
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()

    def finish_step(self) -> tuple[Tensor, bool]:
        """DeepSpeed stepped at the accumulation boundary; returns its global grad norm."""
        norm = self.engine.get_global_grad_norm()
        norm_t = torch.as_tensor(float(norm) if norm is not None else float("nan"))
        return norm_t, bool(torch.isfinite(norm_t)) if norm is not None else True

    def state_dict(self) -> dict[str, Any]:
        """Not used: DeepSpeed checkpoints are sharded (see :meth:`save`)."""
        raise NotImplementedError("DeepSpeed state lives in its sharded checkpoint")

    def save(self, manager: CheckpointManager, step: int, client: dict[str, Any]) -> None:
        """DeepSpeed's own sharded checkpoint, with ``client`` state beside it (all ranks)."""
        save_deepspeed(self.engine, manager, step, client)

    def load(self, manager: CheckpointManager) -> dict[str, Any] | None:
        """Resume from DeepSpeed's newest complete checkpoint (through DeepSpeed's universal
        format when another number of ranks wrote it and ``runtime.resume_elastic`` allows; a
        stop signal during that conversion raises :class:`.preemption.StopRequested` on every
        rank)."""
        refuse_other_kind(manager, deepspeed=True, strategy="deepspeed")
        configured = optimizer_hparams(self.engine.optimizer.param_groups)
        client = load_deepspeed(self.engine, manager, self.cfg.runtime.resume_elastic)
        if client is not None:  # DeepSpeed restored the checkpoint's hyper-parameters too
            keep_configured_hparams(self.engine.optimizer.param_groups, configured)
            self.keep_configured_clip()
        return client

    def keep_configured_clip(self) -> str | None:
        """Set the ZeRO optimiser's clipping threshold back to this config's ``optim.grad_clip``
        (the engine's ``gradient_clipping``; 0: none) after a load and warn when the
        checkpoint's differed, as :func:`keep_configured_hparams` does; returns the change
        ("optim.grad_clip old -> new") or None. ZeRO-1/2 restore the threshold they were saved
        with on every load (universal ones too), so a resume with another ``optim.grad_clip``
        went on clipping at the old one; ZeRO-3 keeps the configured one (a no-op there)."""
        optimizer = self.engine.optimizer
        if not hasattr(optimizer, "clip_grad"):
            return None
        old, new = float(optimizer.clip_grad), float(self.engine.gradient_clipping() or 0.0)
        optimizer.clip_grad = new
        if old == new:
            return None
        change = f"optim.grad_clip {_clip_text(old)} -> {_clip_text(new)}"
        log.warning("the optimiser's gradient clipping differs from the checkpoint's (%s): from "
                    "the resumed step on it uses this config's (optim.grad_clip)", change)
        return change


def _clip_text(clip: float) -> str:
    """A DeepSpeed clipping threshold as a message shows it (0: ``none``, no clipping)."""
    return f"{clip:g}" if clip > 0 else "none"


def wrap_model(module: nn.Module, cfg: TrainConfig, env: DistEnv, device: torch.device,
               lr: float) -> Strategy:
    """The strategy ``cfg.runtime.strategy`` asks for around ``module``."""
    if cfg.runtime.strategy == "deepspeed":
        return DeepSpeedStrategy(module, cfg, env, device, lr)
    return Strategy(module, cfg, env, device, lr)
