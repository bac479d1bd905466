"""What a resumed pretraining run says and does about what changed since its checkpoint:
settings and input-contract fields that differ (warned, old -> new), a data position
written by another split of ranks or workers (``runtime.resume_elastic``: refused, or
continued with the samples the old ranks had not read), and the record files of the steps
after the checkpoint (run again, so their records go; those of ranks an elastic resume
removed too)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eofm.data_shards.elastic import DataChanged, EpochsDiffer
from eofm.data_shards.loader import ShardLoader, epoch_fraction

from .config import ConfigError
from .metrics import JsonlLogger
from .resume_changes import changed_settings

log = logging.getLogger(__name__)

__all__ = ["ELASTIC_ADVICE", "drop_later_records", "drop_removed_ranks_records", "nodata_now_per_band",
           "recorded_anew", "resume_elastic", "sample_keys_path", "warn_resume_changes"]


def sample_keys_path(out: str | Path, rank: int) -> Path:
    """Rank ``rank``'s sample-key records (``logging.sample_keys``) in run folder ``out``."""
    return Path(out) / f"samples.rank{rank}.jsonl"


def drop_later_records(records: JsonlLogger, step: int) -> int:
    """Remove the records after ``step`` from ``records``' file (a run resumed at ``step``
    runs those steps again, all of them when a job died before its first checkpoint;
    :meth:`.JsonlLogger.drop_after`) and log it when there were any; returns how many went."""
    dropped = records.drop_after(step)
    if dropped:
        log.info("%s: records after step %d removed (the steps are run again)",
                 records.path, step)
    return dropped


def drop_removed_ranks_records(out: str | Path, step: int, world: int) -> None:
    """For a job of ``world`` ranks resumed at ``step`` (0: no checkpoint yet; call on rank 0
    only): :func:`drop_later_records` for the sample-key files in ``out`` of ranks that are
    not in this job (``samples.rank{r}.jsonl``, ``r >= world``: an earlier launch had more
    ranks), as each rank does for its own. Their steps after ``step`` are read again by this
    job's ranks, so the killed launch's records of them would count those samples twice."""
    for path in sorted(Path(out).glob("samples.rank*.jsonl")):
        rank = path.name.removeprefix("samples.rank").removesuffix(".jsonl")
        if rank.isdigit() and int(rank) >= world and path == sample_keys_path(out, int(rank)):
            with JsonlLogger(path, enabled=True) as records:
                drop_later_records(records, step)


def warn_resume_changes(client: dict[str, Any], config: dict[str, Any],
                        contract: dict[str, Any], step: int) -> None:
    """Warn, resuming the checkpoint ``client`` at ``step``, about the settings of this run's
    ``config`` (a plain dict) that differ from the checkpoint's run, old -> new
    (:func:`.resume_changes.changed_settings`), and the fields of the input ``contract`` that
    differ from the one it was trained with (``data``, where the statistics came from, aside):
    allowed, but from this step on training follows them and exports state only them."""
    if isinstance(client.get("config"), dict):
        changed_cfg = changed_settings(client["config"], config)
        if changed_cfg:
            log.warning("settings differ from the checkpoint's run (%s): training goes on "
                        "with this config's from step %d; config.yaml and exports state "
                        "these values only", ", ".join(changed_cfg), step)
    then = client.get("contract") or {}
    changed_contract = sorted(k for k in then if k != "data" and then[k] != contract.get(k)
                              and not recorded_anew(k, then[k], contract.get(k)))
    if changed_contract:
        log.warning("the input contract differs from the checkpoint's (%s): the dataset was "
                    "rebuilt or the config changed since; training goes on with the new "
                    "one, and exports will carry it", ", ".join(changed_contract))


# what to do about a checkpoint of another split of ranks or workers (the ranks' refusal and
# the launch preflight's)
ELASTIC_ADVICE = ("set runtime.resume_elastic=true to continue with the samples the old ranks "
                  "had not read, re-cut across this job's ranks and workers")


def recorded_anew(key: str, then: Any, now: Any) -> bool:
    """Whether a contract field differs only because eofm now records the same data another
    way, not because the data changed: per-band ``nodata`` or ``units`` (a list) where an
    older checkpoint stored none (null: its bands' values differed), or a stacked input's
    ``processing_level`` joined in sensor order ("L2A+L1 GRD") where it was sorted."""
    if nodata_now_per_band(key, then, now):
        return True
    if key == "units":
        return then is None and isinstance(now, (list, tuple))
    if key == "processing_level" and isinstance(then, str) and isinstance(now, str):
        return sorted(then.split("+")) == sorted(now.split("+"))
    return False


def nodata_now_per_band(key: str, then: Any, now: Any) -> bool:
    """Whether a contract field differs only because eofm now records per-band nodata: a
    checkpoint written before that stored none (null) where its bands' values differed, and
    the same data now gives one value per band (a list). Not a change of the data."""
    return key == "nodata" and then is None and isinstance(now, (list, tuple))


def drifted_epochs(why: str, e: EpochsDiffer, split: str) -> ConfigError:
    """The refusal of an elastic resume (``why``) from ranks stopped in different epochs
    (``e``), written by ``split`` (ranks x workers): what happened and the ways out."""
    where = ", ".join(f"epoch {ep}: {n} rank{'s' * (n > 1)}"
                      for ep, n in sorted(Counter(e.epochs).items()))
    return ConfigError([
        f"runtime.resume_elastic: {why}; but the checkpoint's ranks stopped in different "
        f"epochs ({where}), so no one epoch's rest can be re-cut "
        f"across this split. Ranks drift apart when samples are skipped as damaged (the run's "
        f"warnings name the shards): a rank whose part lost samples has fewer batches an "
        f"epoch. Resume on the checkpoint's split ({split}), where every rank's position "
        f"continues exactly, or from an earlier checkpoint whose ranks were in one epoch; "
        f"repair or rebuild the damaged shards (eofm-shard verify names them) to stop the drift"])


def resume_elastic(loader: ShardLoader, positions: list[dict[str, Any]], why: str, *,
               allowed: bool, world_size: int, log_layout: Callable[[str], None]) -> None:
    """Set ``loader``'s data position from the checkpoint's per-rank ``positions`` when the
    split of ranks or workers changed (``why``): refused (ConfigError) unless ``allowed``
    (``runtime.resume_elastic``), else the interrupted epoch goes on with exactly the
    samples the old ranks had not read (re-cut across this split of ``world_size`` ranks);
    with another dataset or seed, every worker continues past the share of the epoch the
    old ranks had read. Ranks stopped in different epochs are refused too
    (:func:`drifted_epochs`). ``log_layout``: the trainer's batch-layout line, logged first."""
    if not allowed:  # ConfigError: the CLI prints it, no traceback
        if changed := loader.data_changed(positions[0]):
            raise ConfigError([f"runtime.resume_elastic: {why}; the data changed "
                               f"({changed}), so the position cannot be continued; set "
                               f"runtime.resume_elastic=true to go on past the share of the "
                               f"epoch that was read (weights, optimiser and step exact)"])
        raise ConfigError([f"runtime.resume_elastic: {why}; {ELASTIC_ADVICE}"])
    old = positions[0]
    log_layout(f"elastic resume; the checkpoint's: {len(positions)} ranks x "
                     f"{old.get('batch_size', '?')} micro-batch, "
                     f"{old.get('num_workers', '?')} workers per rank")
    fresh = ("Ranks without a saved RNG state and per-rank objective state (e.g. a loss "
             "record) start fresh.")
    try:
        left = loader.resume_elsewhere(positions)
    except EpochsDiffer as e:  # ConfigError: the CLI prints it, no traceback
        raise drifted_epochs(why, e, f"{len(positions)} ranks x {old.get('num_workers', '?')} "
                                     "workers") from None
    except DataChanged as e:
        ds = loader.dataset
        epoch, share = epoch_fraction(positions, ds.manifest.sample_count, ds.even)
        loader.resume_fraction(epoch, share)
        log.warning("elastic resume (%s; %s): epoch %d continues past the first %.1f%% of "
                    "every worker's part, so it keeps its length, but up to that share of "
                    "it may be samples read before (and as many unread ones skipped); "
                    "later epochs are exact. %s", why, e, epoch, 100.0 * share, fresh)
        return
    if left == 0:
        log.warning("elastic resume (%s): the old ranks had read all of epoch %d; the next "
                    "epoch is cut across %d ranks x %d workers. %s", why, loader.epoch,
                    world_size, max(1, loader.num_workers), fresh)
        return
    # what this split reads of them: not the tail past the last full rank share, nor a
    # worker's partial last batch (the training loader drops it)
    reads = loader.epoch_reads(loader.epoch)
    some = (f"{reads} of the {left} samples the old ranks had not read (the rest: past the "
            f"last full rank share or in a worker's partial last batch)" if reads < left
            else f"the {left} samples the old ranks had not read")
    log.warning("elastic resume (%s): epoch %d goes on with %s, cut across %d ranks x %d "
                "workers; later epochs as usual. %s", why, loader.epoch, some,
                world_size, max(1, loader.num_workers), fresh)
