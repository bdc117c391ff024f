"""Sweep specs: loading, overrides, validation, trial-config precedence (no Ray); module layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from lesionsweep.errors import ConfigError
from lesionsweep.sweep.spec import (
    apply_overrides,
    build_trial_config,
    load_spec,
    parse_overrides,
    spec_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]

SPACE = {
    "name": "small",
    "base": {"method.name": "cam", "method.backbone": "resnet18", "train.batch_size": 4},
    "parameters": {
        "method.pooling": {"choice": ["gap", "lse"]},
        "method.lse_r": {"float": [1.0, 5.0], "when": {"method.pooling": "lse"}},
        "optim.lr": {"float": [1e-4, 1e-2], "log": True},
    },
}


def _spec(tmp_path: Path, **over: object) -> Path:
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    body = {
        "name": "t",
        "data": {"dataset": "phantom", "image_size": 64, "options": {"num_train": 8}},
        "base": {"method.backbone": "test_resnet", "train.epochs": 2},
        "spaces": ["small.yaml"],
        "objective": {"metric": "val/auroc_macro", "mode": "max"},
        "storage": str(tmp_path / "sweeps"),
    }
    body.update(over)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def test_demo_spec_loads_with_defaults() -> None:
    s = load_spec(None)
    assert s.name == "demo" and s.spaces.names == ["demo"]
    assert s.searcher.name == "tpe" and s.early_stopping.enabled
    assert s.early_stopping.metric == s.objective.metric == "val/auroc_macro"
    assert s.max_epochs() == 8 and s.location.root.endswith("/sweeps/demo")


def test_spec_fields_and_trial_config_precedence(tmp_path: Path) -> None:
    s = load_spec(_spec(tmp_path, seed=7, concurrency=3))
    assert s.concurrency == 3 and s.seed == 7
    assert s.location.root == str(tmp_path / "sweeps" / "t")
    cfg = build_trial_config(
        s, "small", {"method.pooling": "lse", "method.lse_r": 2.0, "optim.lr": 1e-3}
    )
    assert cfg.method.kwargs["backbone"] == "test_resnet"  # spec base beats space base
    assert cfg.train.batch_size == 4  # space base kept
    assert cfg.train.epochs == 2 and cfg.train.seed == 7  # spec base; seed from the spec
    assert cfg.data.image_size == 64 and cfg.data.options == {"num_train": 8}
    assert cfg.method.kwargs["lse_r"] == 2.0 and cfg.optim.lr == 1e-3


def test_overrides(tmp_path: Path) -> None:
    ov = parse_overrides(
        [
            "budget.trials=5",
            "base.optim.weight_decay=0.1",
            "data.options.num_val=4",
            "searcher=random",
        ]
    )
    s = load_spec(_spec(tmp_path), ov)
    assert s.budget.trials == 5 and s.searcher.name == "random"
    assert s.base["optim.weight_decay"] == 0.1 and s.data["options"] == {
        "num_train": 8,
        "num_val": 4,
    }
    with pytest.raises(ConfigError, match=r"override 'budgets.trials': unknown key 'budgets'"):
        apply_overrides({}, {"budgets.trials": 1}, "spec.yaml")
    with pytest.raises(ConfigError, match="expected PATH=VALUE with a dotted PATH"):
        parse_overrides(["budget.trials"])


def test_base_pins_a_searched_parameter(tmp_path: Path) -> None:
    s = load_spec(_spec(tmp_path), {"base.method.pooling": "lse"})
    from lesionsweep.sweep.spaces import RandomSuggester

    for i in range(5):
        name, params = s.spaces.sample(RandomSuggester(i))
        assert params["method.pooling"] == "lse" and "method.lse_r" in params


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"budgt": {}}, ["budgt", "allowed"]),
        ({"budget": {"trials": 0}}, ["budget.trials = 0 is out of range; allowed: [1, inf]"]),
        ({"budget": {"trail": 3}}, ["budget", "trail"]),
        ({"objective": {"metric": "val/x", "mode": "up"}}, ["objective.mode", "up"]),
        ({"searcher": "bayes"}, ["searcher", "bayes", "tpe"]),
        ({"searcher": {"name": "tpe", "seed": 3}}, ["searcher.seed"]),
        (
            {"searcher": {"name": "tpe", "n_startup_trails": 3}},
            ["unknown option 'searcher.n_startup_trails' for optuna's TPESampler; allowed:"],
        ),
        (
            {
                "objective": {"metrics": ["val/a", "val/b"], "modes": ["max", "min"]},
                "searcher": "cmaes",
            },
            ["cmaes", "single-objective"],
        ),
        (
            {"objective": {"metrics": ["val/a", "val/b"]}, "early_stopping": "asha"},
            ["early_stopping.metric", "multi-objective"],
        ),
        ({"early_stopping": {"scheduler": "median"}}, ["early_stopping.scheduler", "median"]),
        (
            {"early_stopping": {"scheduler": "asha", "grace_period": 5}},
            ["grace_period", "max_t = 2"],
        ),
        ({"resources": {"gpus_per_worker": 1.5}}, ["gpus_per_worker", "fractions"]),
        ({"resources": {"workers": 0}}, ["resources.workers"]),
        ({"resources": {"cpu_per_worker": 1}}, ["resources", "cpu_per_worker", "cpus_per_worker"]),
        ({"base": {"eval.split": "test-loc"}}, ["eval.split", "test"]),
        ({"base": {"optim.lrr": 0.1}}, ["optim.lrr", "allowed"]),
        ({"base": {"method.poolng": "gap"}}, ["method.poolng", "pooling"]),
        ({"data": {"image_sz": 64}}, ["data.image_sz"]),
        ({"spaces": ["missing.yaml"]}, ["missing.yaml", "not found"]),
        ({"searcher": "grid"}, ["method.lse_r", "no grid"]),
        ({"space_selection": "weighted"}, ["weighted", "round_robin"]),
    ],
)
def test_bad_specs_name_file_and_key(tmp_path: Path, change: dict, fragments: list[str]) -> None:
    p = _spec(tmp_path, **change)
    with pytest.raises(ConfigError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert "spec.yaml" in msg or "small.yaml" in msg or "missing.yaml" in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_multi_objective_and_inline_spaces(tmp_path: Path) -> None:
    inline = {"name": "inl", "parameters": {"optim.lr": {"float": [0.001, 0.01]}}}
    s = load_spec(
        _spec(
            tmp_path,
            spaces=["small.yaml", inline],
            objective={"metrics": ["val/auroc_macro", "val/pxap"], "modes": ["max", "max"]},
            early_stopping={"scheduler": "asha", "metric": "val/auroc_macro", "mode": "max"},
        )
    )
    assert s.objective.multi and s.spaces.names == ["small", "inl"]
    assert s.early_stopping.metric == "val/auroc_macro"


def test_to_dict_round_trips(tmp_path: Path) -> None:
    s = load_spec(_spec(tmp_path, searcher={"name": "tpe", "n_startup_trials": 3}))
    again = spec_from_dict(
        yaml.safe_load(yaml.safe_dump(s.to_dict(), sort_keys=False)), source="sweep.yaml"
    )
    assert again.to_dict() == s.to_dict()
    assert again.spaces.spaces[0].params == s.spaces.spaces[0].params


def test_missing_and_malformed_spec(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "none.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_spec(p)


def _ray_module(f: Path) -> bool:
    """The sweep's backend and its private ``_ray`` package are the only Ray importers."""
    sweep = ROOT / "platform" / "sweep"
    return f == sweep / "backend.py" or (sweep / "_ray") in f.parents


def test_only_the_sweep_layer_imports_ray_and_optuna() -> None:
    """Ray (``ray``, ``ray.tune``, ``ray.train``) only in the backend and ``sweep/_ray/``;
    Optuna only in the sweep layer (``platform/sweep/``), which owns search and reporting."""
    ray_pat = re.compile(
        r"^\s*(import|from)\s+ray\b",
        re.M,
    )
    optuna_pat = re.compile(r"^\s*(import|from)\s+optuna\b", re.M)
    sweep = ROOT / "platform" / "sweep"
    offenders = []
    for folder in ("platform", "methods", "search_spaces", "cluster"):
        for f in (ROOT / folder).rglob("*.py"):
            text = f.read_text()
            if ray_pat.search(text) and not _ray_module(f):
                offenders.append(str(f.relative_to(ROOT)))
            if optuna_pat.search(text) and sweep not in f.parents:
                offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


def test_ray_stays_out_of_methods_data_metrics_training() -> None:
    """Methods, data, metrics and the training loop run on a bare GPU box: no Ray at all; the
    rest of the platform reaches Ray only through the backend."""
    any_ray = re.compile(r"^\s*(import\s+ray\b|from\s+ray\b)", re.M)
    offenders = []
    for folder in ("methods", "platform"):
        for f in (ROOT / folder).rglob("*.py"):
            if _ray_module(f):
                continue
            if any_ray.search(f.read_text()):
                offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


# --- every config checked before launch (issue 8) and values typed once (issue 11.2) ------------


def test_pinned_lr_from_set_stays_a_float_into_trials_parquet(tmp_path: Path) -> None:
    """``--set base.optim.lr=1e-3`` used to land as a *string* column ``param.optim.lr``."""
    import pyarrow as pa
    from lesionsweep.sweep.results import TrialRecord, records_to_table
    from lesionsweep.sweep.spaces import RandomSuggester

    s = load_spec(_spec(tmp_path), parse_overrides(["base.optim.lr=1e-3", "base.train.epochs=3"]))
    assert s.base["optim.lr"] == 1e-3 and type(s.base["optim.lr"]) is float
    assert s.spaces.pins == {"optim.lr": 1e-3}
    assert s.spaces.column_types()["optim.lr"] == "float64"
    records = []
    for i in range(3):
        name, params = s.spaces.sample(RandomSuggester(i))
        assert type(params["optim.lr"]) is float
        records.append(
            TrialRecord(
                trial_id=f"t{i}", status="completed", space=name, method="cam", params=params
            )
        )
    table = records_to_table(records, TrialRecord, s.spaces.column_types())
    assert table.schema.field("param.optim.lr").type == pa.float64()
    assert table.column("param.optim.lr").to_pylist() == [1e-3] * 3
    # an int given for a float key is widened once, at the edge
    s2 = load_spec(_spec(tmp_path), {"base.optim.lr": 1})
    assert type(s2.base["optim.lr"]) is float


def test_pooling_typo_in_a_space_fails_before_any_trial(tmp_path: Path) -> None:
    typo = {"name": "typo", "parameters": {"method.pooling": {"choice": ["gap", "lsee"]}}}
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(typo))
    with pytest.raises(ConfigError) as e:
        load_spec(_spec(tmp_path, spaces=["typo.yaml"]))
    assert str(e.value) == (
        f"{tmp_path / 'typo.yaml'}: parameter method.pooling = 'lsee' is not allowed; "
        "choose one of: gap, gmp, lse, pcam, wildcat"
    )


def test_spec_data_may_not_silently_override_a_space_base(tmp_path: Path) -> None:
    """The shipped PYLON space fixes 256 px; a spec's data section saying 128 is refused."""
    p = _spec(tmp_path, spaces=["pylon"], data={"dataset": "phantom", "image_size": 128})
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    msg = str(e.value)
    assert msg.startswith(
        f"{p}: data.image_size = 128 in the spec's data contradicts space 'pylon'"
    )
    assert "whose base sets data.image_size = 256" in msg
    # overriding on purpose through base is allowed, but 128 is still not a PYLON size
    p = _spec(
        tmp_path,
        spaces=["pylon"],
        data={"dataset": "phantom"},
        base={"data.image_size": 128, "method.backbone": "test_resnet"},
    )
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert "method 'pylon' needs data.image_size to be a multiple of 256" in str(e.value)
    assert "data.image_size = 128 (pinned by the spec)" in str(e.value) or "128" in str(e.value)
    p = _spec(
        tmp_path,
        spaces=["pylon"],
        data={"dataset": "phantom"},
        base={"data.image_size": 512, "method.backbone": "test_resnet"},
    )
    assert build_trial_config(load_spec(p), "pylon", {}).data.image_size == 512


@pytest.mark.parametrize(
    ("image_size", "bad"),
    [
        ({"choice": [256, 384]}, "data.image_size = 384 (parameter choice [256, 384])"),
        ({"int": [256, 512]}, "data.image_size = 257 (parameter int [256, 512])"),
        ({"int": [256, 512], "step": 128}, "data.image_size = 384"),
    ],
)
def test_every_reachable_method_and_size_is_checked(
    tmp_path: Path, image_size: dict, bad: str
) -> None:
    space = {
        "name": "mix",
        "base": {"method.backbone": "test_resnet"},
        "parameters": {
            "method.name": {"choice": ["cam", "pylon"]},
            "data.image_size": image_size,
        },
    }
    with pytest.raises(ConfigError, match="needs data.image_size to be a multiple of") as e:
        load_spec(_spec(tmp_path, spaces=[space], base={}, data={"dataset": "phantom"}))
    assert bad in str(e.value)
    # the same sizes are fine when the size parameter applies to CAM only
    space["parameters"]["data.image_size"]["when"] = {"method.name": "cam"}
    space["base"]["data.image_size"] = 256
    with pytest.raises(ConfigError, match="both in base and in parameters"):
        load_spec(_spec(tmp_path, spaces=[space], base={}, data={"dataset": "phantom"}))


def test_pylon_size_only_for_cam_passes(tmp_path: Path) -> None:
    space = {
        "name": "mix",
        "base": {"method.backbone": "test_resnet"},
        "parameters": {
            "method.name": {"choice": ["cam", "pylon"]},
            "data.image_size": {"choice": [64, 96], "when": {"method.name": "cam"}},
        },
    }
    data = {"dataset": "phantom", "image_size": 256}
    s = load_spec(_spec(tmp_path, spaces=[space], base={}, data=data))
    assert s.spaces.names == ["mix"]


def test_missing_dataset_root_fails_before_launch(tmp_path: Path) -> None:
    p = _spec(tmp_path, data={"dataset": "nih", "root": str(tmp_path / "nih"), "image_size": 64})
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert str(e.value) == (
        f"{p}: data.root = {str(tmp_path / 'nih')!r} for dataset 'nih' does not exist on this "
        "machine; give the folder with the dataset's official files"
    )
    p = _spec(tmp_path, data={"dataset": "siim", "image_size": 64})
    with pytest.raises(ConfigError, match="can train on dataset 'siim' but no data.root is set"):
        load_spec(p)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "{p}: the sweep spec is empty; nothing would be configured; keys: name,"),
        ("# nothing\n", "{p}: the sweep spec is empty"),
        ("- a\n- b\n", "{p}: a sweep spec must be a mapping of keys, got a list; keys: name,"),
    ],
)
def test_empty_and_list_specs_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_spec(p, {"budget.trials": 2})
    assert str(e.value).startswith(expected.format(p=p))


def test_binary_spec_and_bad_storage_scheme(tmp_path: Path) -> None:
    p = tmp_path / "model.yaml"
    p.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert (
        str(e.value) == f"{p}: not a text file (byte 128 is not UTF-8); expected a YAML sweep spec"
    )
    with pytest.raises(ConfigError) as e:
        load_spec(_spec(tmp_path, storage="ftp://host/sweeps"))
    assert (
        "storage = 'ftp://host/sweeps': unsupported URI scheme 'ftp'; use a local folder or "
        "one of: file://, s3://" in str(e.value)
    )


def test_a_search_space_given_as_spec_says_how_to_use_it(tmp_path: Path) -> None:
    p = tmp_path / "small.yaml"
    p.write_text(yaml.safe_dump(SPACE))
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert str(e.value) == (
        f"{p}: this is a search space, not a sweep spec; list it in a spec's `spaces:` "
        f"(spaces: [{p}]), or run it with the demo settings: lesionsweep sweep --set spaces=[{p}]"
    )


def test_absurd_epochs_in_a_spec_are_refused(tmp_path: Path) -> None:
    p = _spec(tmp_path, base={"train.epochs": 1_000_000_000})
    with pytest.raises(ConfigError) as e:
        load_spec(p)
    assert str(e.value) == (
        f"{p}: base train.epochs = 1000000000 is out of range; allowed: [1, 10000]"
    )


def test_searcher_options_include_the_sweeps_own(tmp_path: Path) -> None:
    """The bounded-history TPE's window and the study storage are spec options too."""
    opts = {"name": "tpe", "max_history": 200, "n_best": 10, "n_startup_trials": 5}
    spec = load_spec(None, {"searcher": opts, "storage": str(tmp_path)})
    assert spec.searcher.options["max_history"] == 200
    with pytest.raises(ConfigError, match=r"unknown option 'searcher.max_histroy'.*max_history"):
        load_spec(None, {"searcher": {"name": "tpe", "max_histroy": 1}, "storage": str(tmp_path)})
