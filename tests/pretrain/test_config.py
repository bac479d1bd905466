"""Config loading: layered merge order, every problem reported at once, resolved round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eofm.pretrain.config import (
    ConfigError,
    OptimConfig,
    TrainConfig,
    deepspeed_json_problems,
    load_config,
    save_resolved,
    to_dict,
    validate,
    validate_against,
    validate_launch,
)

OK = ["data.path=/data/ds"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_need_only_a_dataset() -> None:
    cfg = load_config(None, OK)
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.betas == [0.9, 0.95] and cfg.objective.mask_ratio == 0.75
    with pytest.raises(ConfigError, match=r"data\.path: required"):
        load_config(None)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.yaml", """
data:
  path: /d
  batch_sise: 32          # typo
  batch_size: 30
  num_workers: -3
optim:
  base_lr: fast           # wrong type
  accum_steps: 4          # 30 % 4 != 0
objective:
  mask_ratio: 1.5
runtime:
  strategy: deepspeed     # without zero_stage
  precision: fp16
""")
    with pytest.raises(ConfigError) as info:
        load_config(bad, ["schedule.warmup_fraction=2", "logging.log_evry=5", "junk"])
    err = info.value
    expected = [
        "data.batch_sise: unknown key (did you mean 'batch_size'?)",
        "optim.base_lr: expected float, got 'fast'",
        "logging.log_evry: unknown key (did you mean 'log_every'?)",
        "override 'junk'",
        "data.num_workers: expected >= 0, or -1 for auto, got -3",
        "not divisible by optim.accum_steps=4",
        "objective.mask_ratio",
        "runtime.zero_stage: DeepSpeed needs a ZeRO stage 1, 2 or 3",
        "runtime.precision: expected one of",
        "schedule.warmup_fraction",
    ]
    for text in expected:
        assert any(text in p for p in err.problems), (text, err.problems)
    assert len(err.problems) == len(expected)
    assert str(len(expected)) in str(err) and isinstance(err, ValueError)


def test_merge_order_defaults_base_file_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", """
data: {path: /base, batch_size: 128}
optim: {base_lr: 1.0e-3, weight_decay: 0.1}
model: {overrides: {drop_path_rate: 0.1, depth: 4}}
""")
    exp = _write(tmp_path / "exp.yaml", """
_base_: base.yaml
data: {path: /exp}
optim: {base_lr: 2.0e-3}
model: {overrides: {depth: 6}}
""")
    cfg = load_config(exp, ["optim.base_lr=3e-4", "optim.base_lr=5e-4", "model.overrides.depth=8",
                            "data.modalities=[s2,s1]", "runtime.deepspeed_config=null"])
    assert cfg.data.path == "/exp" and cfg.data.batch_size == 128  # file over base
    assert cfg.optim.weight_decay == 0.1 and cfg.optim.base_lr == 5e-4  # last override wins
    assert cfg.model.overrides == {"drop_path_rate": 0.1, "depth": 8}  # free dicts merge
    assert cfg.data.modalities == ["s2", "s1"] and cfg.runtime.deepspeed_config is None
    assert cfg.schedule.epochs == 1.0  # untouched default


def test_unreadable_and_cyclic_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml", OK)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, [*OK, "data.bands={s2: [B04, B03, B02]}", "optim.grad_clip=null",
                             "runtime.strategy=deepspeed", "runtime.zero_stage=2",
                             "objective.name=satmaepp", "objective.params={mse_weight: 0.5}",
                             "objective.norm_pix_loss=false"])
    path = save_resolved(cfg, tmp_path / "run")
    assert path.name == "config.yaml" and not list(path.parent.glob("*.tmp"))
    assert load_config(path) == cfg
    plain = to_dict(cfg)
    assert json.loads(json.dumps(plain)) == plain
    assert plain["data"]["bands"] == {"s2": ["B04", "B03", "B02"]}


def test_validate_and_schedule_resolution() -> None:
    cfg = load_config(None, [*OK, "schedule.epochs=2", "schedule.warmup_fraction=0.1"])
    assert cfg.schedule.resolve(steps_per_epoch=50) == (100, 10)
    cfg.schedule.steps, cfg.schedule.warmup_steps = 30, 5
    assert cfg.schedule.resolve() == (30, 5)  # steps and warmup_steps win
    assert cfg.optim.peak_lr(512) == pytest.approx(cfg.optim.base_lr * 2)
    cfg.optim.accum_steps = 0
    cfg.schedule.epochs = cfg.schedule.steps = None
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert len(info.value.problems) == 2


def test_validate_against_environment_and_dataset() -> None:
    cfg = load_config(None, [*OK, "data.batch_size=12", "data.modalities=[s2, s3]",
                             "data.bands={s2: [B02, b03, B13]}", "model.name=vit_tiny_patch9"])
    dataset = {"s2": ["B02", "B03", "B04", "B12"], "s1": ["VV", "VH"]}
    names = ["vit_tiny_patch8", "vit_small_patch8"]
    with pytest.raises(ConfigError) as info:
        validate_against(cfg, world_size=5, dataset_bands=dataset, model_names=names)
    msg = str(info.value)
    assert "world_size * optim.accum_steps = 5 * 1" in msg
    assert "no modality 's3' (it has ['s1', 's2'])" in msg
    assert "'B13' (did you mean 'B12'?)" in msg and "b03" not in msg  # case-insensitive match
    assert "unknown model 'vit_tiny_patch9' (did you mean 'vit_tiny_patch8'?)" in msg
    assert "pretraining reads one modality per run, got ['s2', 's3']" in msg
    assert len(info.value.problems) == 5
    ok = load_config(None, [*OK, "data.batch_size=12", "data.bands={s2: [red]}"])
    validate_against(ok, world_size=4, dataset_bands=dataset, model_names=names,
                     canonical=lambda mod, b: {"red": "B04"}[b])
    assert ok.data.modality(sorted(dataset)) == "s2"  # the one data.bands names, not s1
    vague = load_config(None, [*OK, "data.batch_size=12"])
    with pytest.raises(ConfigError, match=r"the dataset has several modalities \['s1', 's2'\] "
                                          r"and data.bands names none; name the one"):
        validate_against(vague, world_size=4, dataset_bands=dataset, model_names=names)


def test_replace_marker_drops_what_a_parent_set(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", """
data: {path: /base, bands: {s2: [B02, B03, B04], s1: [VV, VH]}}
optim: {base_lr: 1.0e-3, weight_decay: 0.1}
objective: {name: selectivemae, params: {prune_low_loss_ratio: 0.3, kept_mask_ratio: 0.25}}
""")
    exp = _write(tmp_path / "exp.yaml", """
_base_: base.yaml
data: {bands: {_replace_: true, s2: [B04]}}
optim: {_replace_: true, base_lr: 2.0e-3}
objective: {params: {_replace_: true}}
""")
    cfg = load_config(exp)
    assert cfg.data.bands == {"s2": ["B04"]} and cfg.data.path == "/base"  # only bands replaced
    assert cfg.optim.base_lr == 2e-3
    assert cfg.optim.weight_decay == OptimConfig().weight_decay  # the section's default again
    assert cfg.objective.params == {}
    merged = load_config(exp, ["objective.params={prune_low_loss_ratio: 0.1}",
                               "data.bands={s1: [VV]}"])  # without the marker: merge
    assert merged.objective.params == {"prune_low_loss_ratio": 0.1}
    assert merged.data.bands == {"s2": ["B04"], "s1": ["VV"]}
    again = load_config(exp, ["data.bands={_replace_: true, s1: [VV]}"])
    assert again.data.bands == {"s1": ["VV"]}


def test_replace_marker_refusals(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*OK, "optim={_replace_: yes please}", "optim.base_lr={_replace_: true}"])
    problems = info.value.problems
    assert any("optim._replace_: expected true or false, got 'yes please'" in p for p in problems)
    assert any("optim.base_lr: _replace_ applies to a mapping" in p for p in problems)


def test_print_config_is_the_resolved_config_with_each_keys_meaning(tmp_path: Path,
                                                                    capsys) -> None:
    import yaml

    from eofm.pretrain.cli import main
    from eofm.pretrain.config import to_dict

    cfg_path = Path(__file__).resolve().parents[2] / "launch" / "configs" / "quickstart.yaml"
    out = tmp_path / "never"
    args = ["--config", str(cfg_path), "--print-config", f"runtime.out_dir={out}",
            "runtime.resume_elastic=true"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == to_dict(load_config(str(cfg_path), args[3:]))
    assert "  resume_elastic: true  # resume on another world size or worker count: weights, " \
           "optimiser and step exact, the epoch goes on with the samples the old ranks had " \
           "not read (DeepSpeed: through its universal checkpoint, converted once)" \
        in text.splitlines()
    assert not out.exists()  # nothing ran
    assert main(["--config", str(cfg_path), "--print-config", "optim.base_lr=-1"]) == 2


def _undescribed_keys(text: str) -> list[str]:
    """The keys of an ``annotated_yaml`` printout that have no ``# meaning`` (a section, a line
    ending in ``:``, has none of its own)."""
    return [line.split(":")[0].strip() for line in text.splitlines()
            if not line.endswith(":") and "  # " not in line]


def test_print_config_describes_every_key() -> None:
    """--print-config claims to describe every key; optim.betas and optim.eps had no comment
    (and fine-tuning's sections, subclasses of these, lost every inherited one: see
    tests/finetune/test_finetune.py)."""
    from eofm.pretrain.config import TrainConfig
    from eofm.pretrain.config_doc import annotated_yaml

    assert _undescribed_keys(annotated_yaml(TrainConfig())) == []


def test_a_subclass_keeps_the_comments_of_the_fields_it_inherits() -> None:
    """A field inherited, or declared again with only a new default, has its base class's
    comment; one the subclass comments itself has its own."""
    from eofm.pretrain.config import OptimConfig, RuntimeConfig
    from eofm.pretrain.config_doc import field_comments

    @dataclasses.dataclass
    class Runtime(RuntimeConfig):
        keep_last_k: int = 5
        out_dir: str = "elsewhere"  # where this run writes

    base, notes = field_comments(RuntimeConfig), field_comments(Runtime)
    assert notes["keep_last_k"] == base["keep_last_k"] == "checkpoints kept"
    assert notes["strategy"] == base["strategy"]  # inherited
    assert notes["out_dir"] == "where this run writes"
    assert set(notes) == {f.name for f in dataclasses.fields(Runtime)}
    assert field_comments(OptimConfig)["eps"].startswith("AdamW's epsilon")


def test_continual_pretraining_settings_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*OK, "model.init_from=exports/x", "model.init_new_bands=zeros",
                           "objective.name=softcon", "objective.params={weights: vit.pth}"])
    msg = str(info.value)
    assert "model.init_new_bands: expected one of ['mean', 'random'], got 'zeros'" in msg
    assert ("model.init_from: 'exports/x' and objective.params.weights 'vit.pth' both give "
            "starting weights; keep one") in msg


def test_launch_problems_are_reported_together_without_the_dataset(tmp_path: Path) -> None:
    """What needs no data (world size, strategy, registry, DeepSpeed's JSON) is one error, so
    the trainer can report it before a (possibly long) shard build."""
    ds = _write(tmp_path / "ds.json", json.dumps({"zero_optimization": {"stage": 3}}))
    names = ["vit_tiny_patch8"]
    cfg = load_config(None, [*OK, "data.batch_size=12", "model.name=vit_tiny_patch9",
                             "runtime.strategy=single"])
    with pytest.raises(ConfigError) as info:
        validate_launch(cfg, world_size=5, model_names=names)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "data.batch_size", "runtime.strategy", "model.name"]
    assert "'single' runs one process, but world_size is 5" in str(info.value)
    stage = load_config(None, [*OK, "runtime.strategy=deepspeed", "runtime.zero_stage=2",
                               f"runtime.deepspeed_config={ds}"])
    with pytest.raises(ConfigError, match=rf"runtime.deepspeed_config: {ds} sets "
                                          r"zero_optimization.stage=3, runtime.zero_stage is 2"):
        validate_launch(stage, world_size=1, model_names=names)
    ds.write_text("{not json")
    with pytest.raises(ConfigError, match=rf"{ds}: expected a DeepSpeed JSON file, cannot read"):
        validate_launch(stage, world_size=1, model_names=names)
    missing = load_config(None, [*OK, "runtime.strategy=deepspeed", "runtime.zero_stage=2",
                                 f"runtime.deepspeed_config={tmp_path / 'none.json'}"])
    with pytest.raises(ConfigError, match=r"runtime.deepspeed_config: no such file"):
        validate_launch(missing, world_size=1, model_names=names)
    validate_launch(load_config(None, OK), world_size=1, model_names=names)


def test_deepspeed_json_is_checked_by_the_launch_check_when_the_strategy_builds_it(
        tmp_path: Path) -> None:
    """DeepSpeedStrategy.ds_config (what the engine gets) reports a bad JSON with the same
    check and message as the launch (deepspeed_json_problems): a ConfigError, not a bare
    AttributeError or a second wording of the ZeRO stage conflict."""
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.strategy import DeepSpeedStrategy

    ds = _write(tmp_path / "ds.json", json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = load_config(None, [*OK, "runtime.strategy=deepspeed", "runtime.zero_stage=2",
                             f"runtime.deepspeed_config={ds}"])
    with pytest.raises(ConfigError) as info:
        DeepSpeedStrategy.ds_config(cfg, DistEnv())
    assert info.value.problems == deepspeed_json_problems(cfg)
    assert info.value.problems == [f"runtime.deepspeed_config: {ds} sets zero_optimization."
                                   f"stage=3, runtime.zero_stage is 2; make them agree"]
    ds.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=rf"{ds}: expected a JSON object, got list"):
        DeepSpeedStrategy.ds_config(cfg, DistEnv())
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"},
                              "scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ConfigError) as info:  # the engine would step them beside eofm's own
        DeepSpeedStrategy.ds_config(cfg, DistEnv())
    assert info.value.problems == [f"runtime.deepspeed_config: {ds} has ['optimizer', "
                                   "'scheduler'] section(s); eofm passes its own AdamW (optim.*),"
                                   " sets the lr each step (schedule.*) and the precision "
                                   "(runtime.precision): remove them"]
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True}}))
    merged = DeepSpeedStrategy.ds_config(cfg, DistEnv())
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}


def test_grouped_tokenizer_groups_are_checked_against_the_bands_read() -> None:
    """Groups naming a band the run does not read are a config problem listed with the band
    problems, not a traceback from building the model."""
    dataset = {"s2": ["B02", "B03", "B04", "B05", "B08", "B8A", "B11", "B12"]}
    names = ["vit_tiny_patch8"]
    grouped = [*OK, "model.tokenizer=grouped", "data.bands={s2: [B02, B03, B04, B08, B99]}"]
    with pytest.raises(ConfigError) as info:
        validate_against(load_config(None, grouped), world_size=1, dataset_bands=dataset,
                         model_names=names)
    msg = str(info.value)
    assert len(info.value.problems) == 1 and "'B99'" in msg  # the groups wait for valid bands
    with pytest.raises(ConfigError) as info:
        validate_against(load_config(None, [*grouped[:-1], "data.bands={s2: [B02, B03, B04, "
                                                           "b08]}"]),
                         world_size=1, dataset_bands=dataset, model_names=names)
    assert info.value.problems == [
        "model.tokenizer: grouped (default SatMAE S2 groups): the groups name bands ['B05', "
        "'B06', 'B07', 'B8A', 'B11', 'B12'] that this run does not read (its s2 bands: ['B02', "
        "'B03', 'B04', 'B08']); add them to data.bands.s2, or give model.overrides.groups of "
        "those bands"]
    own = load_config(None, [*OK, "model.tokenizer=grouped",
                             "model.overrides={groups: {rgb: [B02, B03, B04], swir: [B11, B12]}}"])
    validate_against(own, world_size=1, dataset_bands=dataset, model_names=names)  # all bands
    preset = load_config(None, [*OK, "model.tokenizer=grouped", "model.overrides={groups: satmae}"])
    with pytest.raises(ConfigError, match=r"model.overrides.groups: expected a mapping or one of "
                                          r"\['satmae_s2'\], got 'satmae' \(did you mean"):
        validate_against(preset, world_size=1, dataset_bands=dataset, model_names=names)


def test_quickstart_loader_workers_are_automatic(monkeypatch: pytest.MonkeyPatch) -> None:
    """quickstart.yaml asks for -1: one worker on a 2-core machine (also with two ranks), more
    on a GPU node."""
    import os

    from eofm.pretrain.data import resolve_workers

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "launch" / "configs" / "quickstart.yaml")
    assert cfg.data.num_workers == -1
    for cpus, ranks, workers in ((2, 1, 1), (2, 2, 1), (16, 1, 8), (16, 2, 7)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        monkeypatch.setattr(os, "cpu_count", lambda n=cpus: n)
        assert resolve_workers(cfg.data.num_workers, ranks) == workers, (cpus, ranks)


def test_loading_without_value_checks_still_refuses_unknown_keys(tmp_path) -> None:
    """check=False (the launch scripts' out_dir look-up) skips the value checks, not the
    structure: an unknown key or a wrong type is still refused."""
    path = tmp_path / "x.yaml"
    path.write_text("runtime: {out_dir: runs/x}\n")
    bad = ["optim.base_lr=-1"]
    with pytest.raises(ConfigError, match="base_lr"):
        load_config(path, bad)
    assert load_config(path, bad, check=False).runtime.out_dir == "runs/x"
    with pytest.raises(ConfigError, match=r"runtime\.out_dirr"):
        load_config(path, ["runtime.out_dirr=y"], check=False)
    with pytest.raises(ConfigError, match=r"optim\.base_lr"):
        load_config(path, ["optim.base_lr=fast"], check=False)


def test_compile_backend_is_one_torch_knows_and_only_with_compile() -> None:
    """runtime.compile_backend: any backend torch.compiler.list_backends(exclude_tags=())
    names (inductor by default, aot_eager for tracing without code generation); a misspelt
    one is a problem, also while runtime.compile is off (a base YAML's backend stays when a
    run turns compiling off: accepted)."""
    validate(load_config(None, [*OK, "runtime.compile=true", "runtime.compile_backend=aot_eager"]))
    validate(load_config(None, [*OK, "runtime.compile=true"]))  # inductor
    validate(load_config(None, [*OK, "runtime.compile_backend=aot_eager"]))  # compile off
    for compile_ in ("true", "false"):
        with pytest.raises(ConfigError) as info:
            validate(load_config(None, [*OK, f"runtime.compile={compile_}",
                                        "runtime.compile_backend=aot_eagre"]))
        [problem] = info.value.problems
        assert problem.startswith("runtime.compile_backend: expected one of [")
        assert problem.endswith("got 'aot_eagre' (did you mean 'aot_eager'?)")


def test_a_warmup_that_takes_the_whole_run_is_refused() -> None:
    """schedule.warmup_steps at or above the run's length (most easily: a short
    schedule.epochs on a small dataset, which no config check can see) would keep the lr
    climbing for the whole run, never at its peak nor decaying: a ConfigError naming both
    numbers, instead of the warmup silently clamped to the run."""
    cfg = load_config(None, [*OK, "schedule.epochs=0.02", "schedule.warmup_steps=50"])
    with pytest.raises(ConfigError, match=r"schedule.warmup_steps: 50 warmup steps take the "
                                          r"whole run \(schedule.epochs=0.02 x 450 steps per "
                                          r"epoch = 9 steps\).*expected fewer than 9"):
        cfg.schedule.resolve(steps_per_epoch=450)
    assert cfg.schedule.resolve(steps_per_epoch=5000) == (100, 50)
    cfg = load_config(None, [*OK, "schedule.steps=4", "schedule.warmup_steps=3"])
    assert cfg.schedule.resolve() == (4, 3)
    cfg.schedule.warmup_steps = 4  # (the config checks refuse it too, where they can see it)
    with pytest.raises(ConfigError, match=r"4 warmup steps take the whole run "
                                          r"\(schedule.steps=4\)"):
        cfg.schedule.resolve()
    cfg.schedule.warmup_steps, cfg.schedule.warmup_fraction = None, 0.5
    assert cfg.schedule.resolve() == (4, 2)  # a fraction (< 1) always leaves some decay


def test_settings_the_strategy_would_ignore_are_refused() -> None:
    """DeepSpeed's settings under another strategy, and a warmup as long as the run, were
    accepted and then ignored or clamped without a word."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [*OK, "runtime.strategy=ddp", "runtime.zero_stage=2",
                           "runtime.deepspeed_config=/nonexistent.json",
                           "schedule.steps=4", "schedule.warmup_steps=4"])
    msg = str(e.value)
    assert "runtime.zero_stage: 2 is read by runtime.strategy=deepspeed only" in msg
    assert "runtime.deepspeed_config: '/nonexistent.json' is read by runtime.strategy=" in msg
    assert "schedule.warmup_steps: 4 is not below schedule.steps=4" in msg
    load_config(None, [*OK, "runtime.strategy=deepspeed", "runtime.zero_stage=2",
                       "schedule.steps=4", "schedule.warmup_steps=3"])


@pytest.mark.parametrize("typed", ["0612", "007", "12:30", "on", "1e3", "runs/a #1"])
def test_string_fields_take_the_override_as_typed(typed: str) -> None:
    """A path or name override was read as YAML: out_dir=0612 trained into 394/ (octal),
    12:30 into 750, on into True, and '#1' was cut as a comment."""
    from eofm.finetune.finetune_config import load_config as finetune_config

    cfg = load_config(None, [*OK, f"runtime.out_dir={typed}", f"model.init_from='{typed}'"])
    assert cfg.runtime.out_dir == typed and cfg.model.init_from == typed
    ft = finetune_config(None, [f"encoder.path={typed}", f"runtime.out_dir={typed}",
                                f"data.path={typed}"])
    assert ft.encoder.path == ft.data.path == ft.runtime.out_dir == typed


def test_other_overrides_are_still_read_as_yaml() -> None:
    cfg = load_config(None, [*OK, "optim.base_lr=3e-4", "model.init_from=null",
                             "data.bands={s2: [B02, B03]}", "schedule.steps=7"])
    assert cfg.optim.base_lr == 3e-4 and cfg.model.init_from is None
    assert cfg.data.bands == {"s2": ["B02", "B03"]} and cfg.schedule.steps == 7


@pytest.mark.parametrize("null", ["null", "~"])
def test_null_for_a_required_path_is_refused_not_a_folder_named_null(null: str) -> None:
    """runtime.out_dir=null trained into a folder called null/; quoted, the text stays."""
    with pytest.raises(ConfigError, match=r"runtime\.out_dir: expected str, got None"):
        load_config(None, [*OK, f"runtime.out_dir={null}"])
    assert load_config(None, [*OK, f"runtime.out_dir='{null}'"]).runtime.out_dir == null
    assert load_config(None, [*OK, f"logging.jsonl={null}"]).logging.jsonl is None


def test_objective_params_are_checked_when_the_config_loads() -> None:
    """A typo or a null in objective.params was found only when the objective was built: after
    the loader (and a shard build) started, under torchrun in every rank's traceback."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [*OK, "objective.name=selectivemae",
                           "objective.params={kept_mask_ratoi: 0.3, growth_steps: null}"])
    msg = str(e.value)
    assert "unknown key(s) for 'selectivemae': 'kept_mask_ratoi' (did you mean " \
        "'kept_mask_ratio'?)" in msg
    assert "objective.params.growth_steps: expected a number (the default is 3), got null" in msg
    cfg = load_config(None, [*OK, "objective.name=softcon", "objective.params={head_norm: null}"])
    assert cfg.objective.params == {"head_norm": None}  # null is one of its values


@pytest.mark.parametrize(("overrides", "expected"), [
    (["objective.params.masking=bogus"],
     ["objective.params.masking: expected 'independent' or 'consistent', got 'bogus'"]),
    (["objective.name=selectivemae",
      "objective.params={kept_mask_ratio: 2, stage_fractions: [0.5, 0.2, 0.9], score: hog, "
      "score_input: rgb, temperature: 0, growth_steps: 0, bins: 1, cell_size: 3, "
      "prune_low_loss_ratio: 1.0}"],
     ["objective.params.kept_mask_ratio: expected a value in (0, mask_ratio=0.75], got 2",
      "objective.params.stage_fractions: expected three fractions 0 <= b1 <= b2 <= b3 <= 1",
      "objective.params.score: expected one of ('energy', 'orientation'), got 'hog'",
      "objective.params.score_input: expected one of ('bands', 'luminance'), got 'rgb'",
      "objective.params.temperature: expected a positive value, got 0",
      "objective.params.growth_steps: expected a positive int, got 0",
      "objective.params.bins: expected at least 2 orientation bins, got 1",
      "objective.params.cell_size: expected null or a positive divisor of patch_size=8, got 3",
      "objective.params.prune_low_loss_ratio: expected a value in [0, 1)"]),
    (["objective.name=selectivemae", "model.img_size=16", "objective.mask_ratio=0.9"],
     ["objective.mask_ratio, objective.params.kept_mask_ratio: model.img_size 16 at patch "
      "size 8 gives 4 tokens at mask_ratio=0.9, kept_mask_ratio=0.25 leave 0 visible"]),
    (["objective.name=satmaepp", "objective.norm_pix_loss=false",
      "objective.params={num_scales: 1, mse_weight: -1, upsampler_ratio: 0, masking: same}"],
     ["objective.params.masking: expected 'independent' or 'consistent', got 'same'",
      "objective.params.num_scales: expected null or a whole number >= 2 (the input scale plus "
      "at least one extra), got 1",
      "objective.params.mse_weight, objective.params.ms_weight: expected non-negative weights",
      "objective.params.upsampler_ratio: expected a whole number >= 1"]),
    (["objective.name=softcon",
      "objective.params={drop_ratio: 1.0, loss: mse, tau: 0, momentum: 0.9, momentum_final: 0.5, "
      "crop_scale: [0.5, 0.2], pool: max}"],
     ["objective.params.drop_ratio: expected a value in [0, 1), got 1.0",
      "objective.params.loss: expected one of ('soft_ce', 'bce'), got 'mse'",
      "objective.params.tau: expected > 0, got 0",
      "objective.params.momentum, objective.params.momentum_final: expected 0 <= momentum",
      "objective.params.crop_scale: expected [lo, hi] with 0 < lo <= hi <= 1, got [0.5, 0.2]",
      "objective.params.pool: expected 'token' or 'avg', got 'max'"]),
])
def test_objective_param_values_are_checked_when_the_config_loads(
        overrides: list[str], expected: list[str]) -> None:
    """A value out of range or not among the choices (mae masking=bogus, selectivemae
    kept_mask_ratio=2, ...) was refused only when the objective was built: after the loader
    and a data.build_from build, one at a time, and without its objective.params. prefix."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [*OK, *overrides])
    problems = info.value.problems
    for text in expected:
        assert sum(p.startswith(text) for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected), problems


def test_a_param_of_the_wrong_kind_is_reported_once_not_checked_as_a_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [*OK, "objective.name=selectivemae", "objective.params.bins=many",
                           "objective.params.stage_fractions=[a, b, c]"])
    assert info.value.problems == [
        "objective.params.bins: expected a number (the default is 9), got 'many'",
        "objective.params.stage_fractions: expected three fractions 0 <= b1 <= b2 <= b3 <= 1 "
        "(similar | blend | complementary | random), got ['a', 'b', 'c']"]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.overrides.bogus=1"],
     ["model.overrides.bogus: vit_tiny_patch8 takes no such argument; expected one of"]),
    (["model.overrides={dept: 4, patch_size: 16, tokenizer: grouped, drop_path_rate: 2}"],
     ["model.overrides.dept: vit_tiny_patch8 takes no such argument (did you mean 'depth'?)",
      "model.overrides.patch_size: vit_tiny_patch8 takes no such argument; the patch size is "
      "part of the model name",
      "model.overrides.tokenizer: the run sets it from model.tokenizer ('plain'); set "
      "model.tokenizer instead, got 'grouped'",
      "model.overrides.drop_path_rate: expected a number in [0, 1)"]),
    (["model.img_size=65"],
     ["model.img_size: expected multiples of 8 (vit_tiny_patch8 makes one token of each 8 x 8 "
      "pixels), e.g. (64, 64), got (65, 65)"]),
    (["model.overrides.img_size=[64, 60]"],
     ["model.overrides.img_size: expected multiples of 8 (vit_tiny_patch8 makes one token of "
      "each 8 x 8 pixels), e.g. (64, 64), got (64, 60)"]),
    (["model.overrides.img_size='64'"],
     ["model.overrides.img_size: expected a positive int or an (H, W) pair"]),
    (["model.name=resnet50", "model.img_size=48"],
     ["model.img_size: expected multiples of 32 (resnet50 makes one token of each 32 x 32"]),
])
def test_model_overrides_and_img_size_are_checked_when_the_config_loads(
        overrides: list[str], expected: list[str]) -> None:
    """An unknown model.overrides key and a model.img_size the patch size does not divide
    were found only when the encoder was built (after a data.build_from build); now refused
    by the registry's patch size and factory arguments, naming the key, without building it."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [*OK, *overrides])
    problems = info.value.problems
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected), problems


def test_model_checks_leave_valid_and_unregistered_models_alone() -> None:
    ok = load_config(None, [*OK, "model.name=vit_small_patch16", "model.img_size=96",
                            "model.overrides={depth: 2, img_size: [96, 128], bands: [B02]}"])
    assert ok.model.overrides["img_size"] == [96, 128]
    load_config(None, [*OK, "model.name=resnet50", "model.img_size=64"])
    unknown = load_config(None, [*OK, "model.name=vit_nope", "model.overrides.bogus=1",
                                 "model.img_size=65"])  # the name: validate_launch's problem
    with pytest.raises(ConfigError) as info:
        validate_launch(unknown, world_size=1)
    assert [p.split(":")[0] for p in info.value.problems] == ["model.name"]


def test_an_epochs_that_the_steps_would_override_is_refused(tmp_path: Path) -> None:
    """schedule.epochs=50 on a recipe that sets schedule.steps (every CPU recipe does) was
    accepted and ignored without a word: steps decided the length. Refused now, with every
    other problem, naming who set each; null epochs, or null steps, is fine."""
    base = _write(tmp_path / "base.yaml", "data: {path: /data/ds}\nschedule: {steps: 200}\n")
    with pytest.raises(ConfigError) as e:
        load_config(base, ["schedule.epochs=50", "optim.base_lr=-1"])
    assert f"schedule.epochs: set to 50 (by the override schedule.epochs=50) but " \
           f"schedule.steps=200 (from {base}) decides the run length and epochs would be " \
           f"ignored; add schedule.steps=null to train by epochs, or drop schedule.epochs" \
           in str(e.value)
    assert "optim.base_lr: expected > 0, got -1" in str(e.value)  # all at once
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nschedule: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=rf"set to 3 \(by {child}\) but schedule.steps=200 "
                                          rf"\(from {base}\)"):
        load_config(child)
    # one file that shows both (every saved config.yaml does) is its author's: it passes
    both = _write(tmp_path / "both.yaml", "data: {path: /data/ds}\n"
                                          "schedule: {steps: 10, epochs: 2}\n")
    assert load_config(both).schedule.steps == 10
    with pytest.raises(ConfigError, match=r"set to 3 \(by the override schedule.epochs=3\)"):
        load_config(both, ["schedule.epochs=3"])
    assert load_config(child, ["schedule.steps=null"]).schedule.resolve(4.0)[0] == 12
    assert load_config(base, ["schedule.epochs=null"]).schedule.epochs is None
    assert load_config(base, ["schedule.epochs=50", "schedule.epochs=null"]).schedule.steps == 200
    assert load_config(child, ["schedule={_replace_: true, steps: 7}"]).schedule.steps == 7
    # a saved config.yaml lists every field (epochs: 1.0 beside steps): it relaunches
    saved = save_resolved(load_config(base), tmp_path / "run")
    assert load_config(saved, ["schedule.steps=2"]).schedule.steps == 2
    with pytest.raises(ConfigError, match=r"set to 4 \(by the override schedule.epochs=4\)"):
        load_config(saved, ["schedule.epochs=4"])


def test_a_smoke_runs_saved_config_relaunches(tmp_path: Path) -> None:
    """schedule.steps=20 on a recipe of epochs: 5 passes, and its saved config.yaml (steps: 20
    beside epochs: 5.0 in one file) must load again for a relaunch or resume."""
    recipe = _write(tmp_path / "recipe.yaml", "data: {path: x}\nschedule: {epochs: 5}\n")
    saved = save_resolved(load_config(recipe, ["schedule.steps=20"]), tmp_path / "run")
    cfg = load_config(saved)
    assert (cfg.schedule.steps, cfg.schedule.epochs) == (20, 5.0)


def test_a_later_steps_overrides_a_recipes_epochs_on_purpose(tmp_path: Path) -> None:
    """schedule.steps=5 on a recipe that trains by epochs (a smoke run of a full-size recipe)
    is a deliberate override, not an ignored epochs: it passes, and steps decide."""
    recipe = _write(tmp_path / "recipe.yaml", "data: {path: x}\nschedule: {epochs: 50}\n")
    cfg = load_config(recipe, ["schedule.steps=5"])
    assert (cfg.schedule.steps, cfg.schedule.epochs) == (5, 50)
    child = _write(tmp_path / "smoke.yaml", "_base_: recipe.yaml\nschedule: {steps: 5}\n")
    assert load_config(child).schedule.steps == 5
    with pytest.raises(ConfigError, match=r"schedule.epochs: set to 3"):  # epochs after steps
        load_config(child, ["schedule.epochs=3"])


def test_an_ignored_epochs_is_refused_by_the_cli_with_status_2(tmp_path: Path, capsys) -> None:
    from eofm.pretrain.cli import main

    base = _write(tmp_path / "base.yaml", f"data: {{path: {tmp_path}}}\n"
                                          "schedule: {steps: 200}\n")
    assert main(["--config", str(base), "--print-config", "schedule.epochs=50"]) == 2
    err = capsys.readouterr().err
    assert "schedule.epochs: set to 50" in err and "Traceback" not in err


TYPED = ["--tile", "064", "--stride", "032", "2023_01", "on", "1e3", "0x1f", "quoted 007"]
ITEMS = "[--tile, 064, --stride, 032, 2023_01, on, 1e3, 0x1f, 'quoted 007']"


def test_list_of_strings_items_keep_the_text_as_typed_in_a_yaml_file(tmp_path: Path) -> None:
    """Unquoted items of a list[str] field took YAML 1.1 readings: --tile 064 built 52 px
    tiles (octal), 2023_01 became 202301, on became True (string fields keep the text as
    typed). Other lists are still read as YAML."""
    path = _write(tmp_path / "c.yaml", f"""
data:
  path: /data/ds
  build_from: /raw
  build_args: [--tile, 064, --stride, 032]
  build_more: {ITEMS}
  bands: {{s2: [07, B02]}}
  modalities: [01]
optim: {{betas: [0.9, 0.99]}}
model: {{overrides: {{depths: [010]}}}}
""")
    cfg = load_config(path, check=False)
    assert cfg.data.build_args == ["--tile", "064", "--stride", "032"]
    assert cfg.data.build_more == TYPED and cfg.data.bands == {"s2": ["07", "B02"]}
    assert cfg.data.modalities == ["01"]
    assert cfg.optim.betas == [0.9, 0.99] and cfg.model.overrides == {"depths": [8]}


def test_list_of_strings_items_keep_the_text_as_typed_in_an_override() -> None:
    """The same for ``key=[...]`` overrides (``data.build_args=[--tile,064]`` was 52)."""
    cfg = load_config(None, [*OK, f"data.build_more={ITEMS}", "data.bands.s2=[07, 08]",
                             "data.build_from=/raw", "data.build_args=[--tile,064,--stride,032]",
                             "optim.betas=[0.9, 0.99]"])
    assert cfg.data.build_more == TYPED and cfg.data.bands == {"s2": ["07", "08"]}
    assert cfg.data.build_args == ["--tile", "064", "--stride", "032"]
    assert cfg.optim.betas == [0.9, 0.99]
    cfg = load_config(None, [*OK, "data.bands={s2: [07]}", "model.overrides={x: [064]}"],
                      check=False)
    assert cfg.data.bands == {"s2": ["07"]} and cfg.model.overrides == {"x": [52]}
    with pytest.raises(ConfigError, match=r"data\.build_more: expected list\[str\]"):
        load_config(None, [*OK, "data.build_from=/raw", "data.build_more=[a, null]"])


def test_a_deepspeed_json_batch_or_clipping_the_run_would_override_is_refused(tmp_path: Path
                                                                            ) -> None:
    """train_batch_size, gradient_accumulation_steps and gradient_clipping in the DeepSpeed
    JSON were overwritten by the run's values without a word; one that differs is refused,
    naming the eofm field to set instead; the run's own values pass."""
    from eofm.pretrain.config import deepspeed_json_problems

    ds = _write(tmp_path / "ds.json", json.dumps({
        "zero_optimization": {"stage": 2}, "train_batch_size": 999, "gradient_clipping": 5.0,
        "gradient_accumulation_steps": 2}))
    cfg = load_config(None, ["data.path=x", "data.batch_size=32", "optim.accum_steps=2",
                             "optim.grad_clip=1.0", "runtime.strategy=deepspeed",
                             "runtime.zero_stage=2", f"runtime.deepspeed_config={ds}"],
                      check=False)
    problems = deepspeed_json_problems(cfg)
    assert problems == [
        f"runtime.deepspeed_config: {ds} sets train_batch_size=999, but the run sets it from "
        "data.batch_size (32) and would override it; set data.batch_size instead and remove "
        "train_batch_size",
        f"runtime.deepspeed_config: {ds} sets gradient_clipping=5.0, but the run sets it from "
        "optim.grad_clip (1.0) and would override it; set optim.grad_clip instead and remove "
        "gradient_clipping"], problems
    ds.write_text(json.dumps({"train_batch_size": 32, "gradient_clipping": 1.0}))
    assert deepspeed_json_problems(cfg) == []


def test_a_deepspeed_json_micro_batch_the_run_would_override_is_refused(tmp_path: Path
                                                                       ) -> None:
    """train_micro_batch_size_per_gpu in the DeepSpeed JSON was overwritten by the run's
    micro-batch (data.batch_size / (world size x optim.accum_steps)) without a word: 4 in the
    JSON trained with 64. The launch check every rank runs and ds_config refuse it, naming
    the eofm fields and the world size; the run's own micro-batch passes."""
    from eofm.pretrain.distributed import DistEnv
    from eofm.pretrain.strategy import DeepSpeedStrategy

    ds = _write(tmp_path / "ds.json", json.dumps({
        "zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4}))
    cfg = load_config(None, [*OK, "data.batch_size=64", "runtime.strategy=deepspeed",
                             "runtime.zero_stage=2", f"runtime.deepspeed_config={ds}"])
    expected = [f"runtime.deepspeed_config: {ds} sets train_micro_batch_size_per_gpu=4, but "
                "the run sets it from data.batch_size / (world size x optim.accum_steps) (64 / "
                "(1 x 1) = 64) and would override it; set data.batch_size or optim.accum_steps "
                "instead and remove train_micro_batch_size_per_gpu"]
    with pytest.raises(ConfigError) as info:
        validate_launch(cfg, world_size=1, model_names=[cfg.model.name])
    assert [p for p in info.value.problems if p.startswith("runtime.deepspeed_config")] == expected
    with pytest.raises(ConfigError) as info:
        DeepSpeedStrategy.ds_config(cfg, DistEnv())
    assert info.value.problems == expected
    assert deepspeed_json_problems(cfg, 1) == expected
    assert deepspeed_json_problems(cfg) == []  # no world size: nothing to compare with
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2},
                              "train_micro_batch_size_per_gpu": 64}))
    assert deepspeed_json_problems(cfg, 1) == []  # the run's own micro-batch
    assert DeepSpeedStrategy.ds_config(cfg, DistEnv())["train_micro_batch_size_per_gpu"] == 64
    assert deepspeed_json_problems(cfg, 2) == [  # 32 on each of two ranks
        p.replace("(1 x 1) = 64", "(2 x 1) = 32").replace("=4,", "=64,") for p in expected]
    assert deepspeed_json_problems(cfg, 3) == []  # 64 over 3 ranks: check_environment's


@pytest.mark.parametrize(("epochs", "per_epoch", "total"),
                         [(1, 2.5, 3), (1, 4.5, 5), (1, 3.5, 4), (0.1, 30, 3), (2, 7, 14),
                          (0.01, 5, 1)])
def test_epochs_round_the_steps_up(epochs: float, per_epoch: float, total: int) -> None:
    """Python's round took half-way counts to the even neighbour: epochs=1 at 2.5 steps per
    epoch stopped a micro-batch short (2 steps), at 3.5 read one into the next epoch (4)."""
    from eofm.pretrain.config import ScheduleConfig

    assert ScheduleConfig(epochs=epochs, warmup_steps=0).resolve(per_epoch)[0] == total
