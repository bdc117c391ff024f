"""Search spaces: parsing, validation against the run config, sampling, grids (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml
from lesionsweep.errors import ConfigError
from lesionsweep.search_spaces import space_names, space_path
from lesionsweep.sweep.spaces import (
    Choice,
    Const,
    FloatRange,
    IntRange,
    RandomSuggester,
    SpaceSet,
    column_type,
    load_space,
    reachable_backbones,
    space_from_dict,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

CAM = {
    "name": "t",
    "base": {"method.name": "cam", "method.backbone": "test_resnet"},
    "parameters": {
        "method.pooling": {"choice": ["gap", "gmp", "lse"]},
        "method.lse_r": {"float": [1.0, 20.0], "log": True, "when": {"method.pooling": "lse"}},
        "optim.lr": {"float": ["1e-4", 1.0e-2], "log": True},
        "train.batch_size": {"int": [8, 32], "step": 8},
        "loss.name": {"choice": ["bce", "focal"]},
        "loss.gamma": {"float": [0.5, 4.0], "when": {"loss.name": "focal"}},
        "method.fc_bn": {"const": True},
    },
}


def _write(tmp_path: Path, body: dict, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def test_parse_and_types(tmp_path: Path) -> None:
    s = load_space(_write(tmp_path, CAM))
    d = {p.key: p.dist for p in s.params}
    assert d["method.pooling"] == Choice(("gap", "gmp", "lse"))
    assert d["optim.lr"] == FloatRange(1e-4, 1e-2, log=True)  # "1e-4" (a YAML string) accepted
    assert d["train.batch_size"] == IntRange(8, 32, step=8)
    assert d["method.fc_bn"] == Const(True)
    assert s.column_types() == {
        "method.pooling": "string",
        "method.lse_r": "float64",
        "optim.lr": "float64",
        "train.batch_size": "int64",
        "loss.name": "string",
        "loss.gamma": "float64",
        "method.fc_bn": "bool",
    }
    assert column_type(Choice((1, 2.5))) == "float64"
    assert column_type(Choice(("a", 1))) == "string"


def test_conditional_sampling_respects_when(tmp_path: Path) -> None:
    s = load_space(_write(tmp_path, CAM))
    seen_lse = seen_other = 0
    for seed in range(40):
        d = s.sample(RandomSuggester(seed))
        assert ("method.lse_r" in d) == (d["method.pooling"] == "lse")
        assert ("loss.gamma" in d) == (d["loss.name"] == "focal")
        assert d["train.batch_size"] in (8, 16, 24, 32)
        assert 1e-4 <= d["optim.lr"] <= 1e-2
        assert d["method.fc_bn"] is True
        seen_lse += d["method.pooling"] == "lse"
        seen_other += d["method.pooling"] != "lse"
    assert seen_lse and seen_other


def test_compiles_to_optuna_define_by_run(tmp_path: Path) -> None:
    s = load_space(_write(tmp_path, CAM))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        t = study.ask()
        drawn = s.sample(t)
        study.tell(t, 0.0)
        ft = study.trials[-1]
        # every drawn non-constant parameter is an Optuna parameter with the declared distribution
        assert set(ft.params) == {k for k in drawn if k != "method.fc_bn"}
        dist = ft.distributions["optim.lr"]
        assert isinstance(dist, optuna.distributions.FloatDistribution) and dist.log
        assert ft.distributions["train.batch_size"].step == 8
        if "method.lse_r" in ft.params:
            assert ft.params["method.pooling"] == "lse"


def test_representative_draws_cover_every_choice(tmp_path: Path) -> None:
    s = load_space(_write(tmp_path, CAM))
    draws = list(s.representative_draws())
    assert {d["method.pooling"] for d in draws} == {"gap", "gmp", "lse"}
    assert {d["loss.name"] for d in draws} == {"bce", "focal"}
    assert any("loss.gamma" in d and d["loss.gamma"] == 4.0 for d in draws)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            {"parameters": {"method.poolng": {"choice": ["gap"]}}},
            ["unknown key 'method.poolng' for method 'cam'", "pooling"],
        ),
        ({"parameters": {"optim.lr": {"float": [1e-2, 1e-4]}}}, ["optim.lr", "empty range"]),
        (
            {"parameters": {"optim.lr": {"float": [0.0, 1e-2], "log": True}}},
            ["optim.lr", "low > 0"],
        ),
        (
            {"parameters": {"train.batch_size": {"int": [8, 8]}}},
            ["train.batch_size", "empty range"],
        ),
        (
            {"parameters": {"method.lse_r": {"choice": ["big"]}}},
            ["parameter method.lse_r = 'big': expected a number (float) or null for method 'cam'"],
        ),
        (
            {"parameters": {"train.epochs": {"float": [1.0, 3.5]}}},
            ["parameter train.epochs = 3.5: expected an integer in [1, 10000]"],
        ),
        ({"parameters": {"optim.lr": {"uniform": [0, 1]}}}, ["optim.lr", "uniform", "choice"]),
        ({"parameters": {"optim.lr": {"choice": []}}}, ["optim.lr", "empty"]),
        (
            {"parameters": {"optim.lrr": {"float": [0.1, 0.2]}}},
            ["unknown key 'optim.lrr'; allowed: factor, gamma, lr"],
        ),
        ({"parameters": {"modl.x": {"const": 1}}}, ["modl.x", "unknown section"]),
        (
            {"parameters": {"loss.gamma": {"float": [0.5, 4.0]}}},
            ["unknown key 'loss.gamma' for loss 'bce'; allowed: name"],
        ),
        (
            {
                "parameters": {
                    "method.lse_r": {"float": [1.0, 2.0], "when": {"method.pooling": "lse"}}
                }
            },
            ["method.lse_r", "method.pooling", "not an earlier parameter"],
        ),
        (
            {
                "parameters": {
                    "method.pooling": {"choice": ["gap"]},
                    "method.lse_r": {"float": [1.0, 2.0], "when": {"method.pooling": "lse"}},
                }
            },
            ["method.lse_r", "can never hold"],
        ),
        (
            {"base": {}, "parameters": {"method.name": {"choice": ["cam", "nope"]}}},
            ["method.name", "'nope' is not a registered method", "pylon"],
        ),
        ({"parameters": {"method.name": {"const": "pylon"}}}, ["method.name", "both in base"]),
        ({"bases": {}}, ["bases", "allowed"]),
        ({"parameters": {"optim.lr": {"float": [1e-4, 1e-2], "stepp": 1}}}, ["optim.lr", "stepp"]),
        ({"parameters": {"eval.split": {"const": "test"}}}, ["eval.split", "test split"]),
        ({"parameters": {"optim.name": {"choice": ["adam", "lion"]}}}, ["optim.name", "lion"]),
        (
            {"parameters": {"method.pooling": {"choice": ["gap", "lsee"]}}},
            [
                "parameter method.pooling = 'lsee' is not allowed; "
                "choose one of: gap, gmp, lse, pcam, wildcat"
            ],
        ),
        (
            {"parameters": {"train.epochs": {"int": [1, 1_000_000_000]}}},
            ["parameter train.epochs = 1000000000 is out of range; allowed: [1, 10000]"],
        ),
    ],
)
def test_bad_spaces_name_file_and_key(tmp_path: Path, change: dict, fragments: list[str]) -> None:
    body = {"name": "bad", "base": {"method.name": "cam"}, "parameters": {}}
    body.update(change)
    p = _write(tmp_path, body, "my_space.yaml")
    with pytest.raises(ConfigError) as ei:
        load_space(p)
    msg = str(ei.value)
    assert "my_space.yaml" in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_method_key_checked_against_every_possible_method(tmp_path: Path) -> None:
    # lse_r exists for cam and multiscale_cam but not for pylon
    body = {
        "base": {"data.image_size": 256},
        "parameters": {
            "method.name": {"choice": ["cam", "pylon"]},
            "method.lse_r": {"float": [1.0, 5.0]},
        },
    }
    with pytest.raises(ConfigError, match=r"unknown key 'method.lse_r' for method 'pylon'"):
        load_space(_write(tmp_path, body))
    # conditioned on the method, it is fine
    body["parameters"]["method.lse_r"]["when"] = {"method.name": "cam"}
    assert load_space(_write(tmp_path, body)).keys() == ["method.name", "method.lse_r"]


def test_missing_file_and_unknown_shipped_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no shipped search space named 'nope'.*demo"):
        load_space("nope")


@pytest.mark.parametrize("name", space_names())
def test_every_shipped_space_loads(name: str) -> None:
    s = load_space(name)
    assert s.source == str(space_path(name))
    for seed in range(5):
        s.sample(RandomSuggester(seed))


def test_grid_and_its_limits(tmp_path: Path) -> None:
    s = space_from_dict(
        {
            "parameters": {
                "method.pooling": {"choice": ["gap", "lse"]},
                "train.batch_size": {"int": [8, 24], "step": 8},
                "optim.lr": {"float": [0.001, 0.003], "step": 0.001},
            }
        }
    )
    g = s.grid()
    assert g["method.pooling"] == ["gap", "lse"]
    assert g["train.batch_size"] == [8, 16, 24]
    assert [round(v, 6) for v in g["optim.lr"]] == [0.001, 0.002, 0.003]
    s2 = space_from_dict({"parameters": {"optim.lr": {"float": [0.001, 0.01]}}}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml.*optim.lr.*no grid"):
        s2.grid()


def test_space_set_round_robin_searched_and_pins() -> None:
    a = space_from_dict({"name": "a", "parameters": {"optim.lr": {"float": [1e-4, 1e-2]}}})
    b = space_from_dict(
        {
            "name": "b",
            "parameters": {"optim.lr": {"choice": [1, 2]}, "train.epochs": {"int": [1, 3]}},
        }
    )
    rr = SpaceSet((a, b))
    names = [rr.sample(RandomSuggester(i), number=i)[0] for i in range(6)]
    assert names == ["a", "b", "a", "b", "a", "b"]
    sug = RandomSuggester(0)
    name, params = rr.sample(sug, number=1)
    assert set(sug.params) == {"b:optim.lr", "b:train.epochs"}  # namespaced Optuna names
    assert set(params) == {"optim.lr", "train.epochs"}
    assert rr.column_types() == {"optim.lr": "float64", "train.epochs": "int64"}
    searched = SpaceSet((a, b), selection="searched")
    sug = RandomSuggester(3)
    searched.sample(sug)
    assert "space" in sug.params
    pinned = SpaceSet((b,), pins={"train.epochs": 7})
    assert pinned.sample(RandomSuggester(0))[1]["train.epochs"] == 7
    with pytest.raises(ConfigError, match="used more than once"):
        SpaceSet((a, a))
    with pytest.raises(ConfigError, match="round_robin, searched"):
        SpaceSet((a,), selection="sometimes")


def test_float_step_and_int_log_values() -> None:
    s = space_from_dict(
        {
            "parameters": {
                "optim.weight_decay": {"float": [0.0, 0.5], "step": 0.25},
                "train.batch_size": {"int": [2, 64], "log": True},
            }
        }
    )
    for seed in range(20):
        d = s.sample(RandomSuggester(seed))
        assert d["optim.weight_decay"] in (0.0, 0.25, 0.5)
        assert 2 <= d["train.batch_size"] <= 64 and isinstance(d["train.batch_size"], int)
    assert math.isclose(FloatRange(1e-3, 1.0, log=True).representatives()[1], 1.0)


def test_reachable_backbones_cover_params_fallbacks_defaults_and_pins() -> None:
    """What the pre-launch backbone check looks at: every value a trial can build with."""
    when_cam = {"choice": ["resnet34", "resnt50"], "when": {"method.name": "cam"}}
    space = space_from_dict(
        {
            "name": "bb",
            "parameters": {
                "method.name": {"choice": ["cam", "pylon"]},
                "data.image_size": {"choice": [256]},
                "method.backbone": when_cam,
            },
        },
        source="bb.yaml",
    )
    assert reachable_backbones(space, {}, {}, "s.yaml") == {
        "resnet34": "bb.yaml: parameter",
        "resnt50": "bb.yaml: parameter",
        "resnet18": "bb.yaml: method 'cam''s default",  # inactive: the constructor's default
        "resnet50": "bb.yaml: method 'pylon''s default",
    }
    # the spec's base is the fallback when given; a pin replaces everything
    spec_base = reachable_backbones(space, {"method.backbone": "x"}, {}, "s.yaml")
    assert spec_base == {
        "resnet34": "bb.yaml: parameter",
        "resnt50": "bb.yaml: parameter",
        "x": "s.yaml: base",
    }
    pinned = reachable_backbones(space, {}, {"method.backbone": "y"}, "s.yaml")
    assert pinned == {"y": "s.yaml: base"}
    based = space_from_dict(
        {
            "name": "d",
            "base": {
                "method.name": "pylon",
                "method.backbone": "densenet121",
                "data.image_size": 256,
            },
        },
        source="d.yaml",
    )
    assert reachable_backbones(based, {}, {}, "s.yaml") == {"densenet121": "d.yaml: base"}
