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
