"""Strict loading of run configs (platform/config.py): every bad input is one ConfigError that
names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lesionsweep.config import (
    RunConfig,
    config_from_dict,
    config_from_flat,
    dump_config,
    load_config,
    merge_flat,
)
from lesionsweep.errors import ConfigError

GOOD = {
    "method": {"name": "cam", "backbone": "test_resnet", "pooling": "lse", "lse_r": 5.0},
    "loss": {"name": "focal", "gamma": 1.5},
    "data": {"dataset": "phantom", "image_size": 64, "options": {"num_train": 32}},
    "optim": {"name": "adamw", "lr": "1e-3", "schedule": "cosine", "warmup_epochs": 1},
    "train": {"epochs": 2, "batch_size": 8, "in_chans": 3},
    "eval": {"split": "val", "select_metric": "val/point_acc_micro"},
}


def _write(tmp_path: Path, doc: object, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def test_good_config_loads_typed(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.method.name == "cam"
    assert dict(cfg.method.kwargs) == {"backbone": "test_resnet", "pooling": "lse", "lse_r": 5.0}
    assert cfg.loss.name == "focal" and dict(cfg.loss.kwargs) == {"gamma": 1.5}
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.in_chans == 3 and cfg.data.image_size == 64
    assert dict(cfg.data.options) == {"num_train": 32}


def test_unknown_section_names_file_and_section(tmp_path: Path) -> None:
    p = _write(tmp_path, {**GOOD, "trainer": {"epochs": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "'trainer'" in msg and "optim" in msg  # lists the allowed sections


def test_unknown_dataclass_key_names_file_and_key(tmp_path: Path) -> None:
    doc = {**GOOD, "optim": {**GOOD["optim"], "learning_rate": 0.1}}
    p = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "optim.learning_rate" in msg and "lr" in msg


def test_unknown_method_kwarg_names_key_and_allowed(tmp_path: Path) -> None:
    doc = {**GOOD, "method": {**GOOD["method"], "poolingg": "gap"}}
    p = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "method.poolingg" in msg and "pooling" in msg


def test_unknown_loss_kwarg_and_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"loss\.gama"):
        load_config(_write(tmp_path, {**GOOD, "loss": {"name": "focal", "gama": 2}}))
    with pytest.raises(ConfigError, match=r"loss\.name = 'hinge'"):
        load_config(_write(tmp_path, {**GOOD, "loss": {"name": "hinge"}}))
    with pytest.raises(ConfigError, match=r"method\.name = 'gradcam'.*cam"):
        load_config(_write(tmp_path, {**GOOD, "method": {"name": "gradcam"}}))


@pytest.mark.parametrize(
    ("section", "key", "value", "pattern"),
    [
        ("optim", "name", "lamb", r"optim\.name = 'lamb' is not allowed.*adamw"),
        ("optim", "schedule", "linear", r"optim\.schedule = 'linear'.*cosine"),
        ("data", "dataset", "mimic", r"data\.dataset = 'mimic'.*phantom"),
        (
            "train",
            "epochs",
            "three",
            r"train\.epochs = 'three': expected an integer in \[1, 10000\]",
        ),
        ("train", "amp", "yes", r"train\.amp = 'yes': expected true or false"),
        ("optim", "lr", "fast", r"optim\.lr = 'fast': expected a number \(float\)"),
        ("optim", "lr", float("nan"), r"optim\.lr = nan: expected a number \(float\)"),
        ("optim", "lr", -1.0, r"optim\.lr = -1\.0 is out of range; allowed: \[0, inf\]"),
        ("optim", "lr", 0.0, r"optim\.lr must be > 0"),
        ("train", "in_chans", 2, r"train\.in_chans = 2 is not allowed; choose one of: 1, 3"),
        ("train", "batch_size", 0, r"train\.batch_size = 0 is out of range; allowed: \[1, 65536\]"),
        ("data", "classes", "Mass", r"data\.classes = 'Mass': expected a list of strings or null"),
        (
            "data",
            "image_size",
            None,
            r"data\.image_size = None: expected an integer in \[16, 4096\]",
        ),
        ("eval", "split", "test", r"eval\.split = 'test'.*lesionsweep evaluate"),
        ("eval", "split", "test-loc", r"eval\.split = 'test-loc'"),
        ("eval", "loc_split", "test-loc", r"eval\.loc_split = 'test-loc'.*lesionsweep evaluate"),
        ("eval", "loc_split", "Test", r"eval\.loc_split = 'Test'.*lesionsweep evaluate"),
        ("eval", "loc_split", "val", r"eval\.loc_split = 'val' is not allowed.*auto, none"),
        ("eval", "loc_split", "train", r"eval\.loc_split = 'train' is not allowed"),
        ("eval", "loc_split", "valloc", r"eval\.loc_split = 'valloc' is not allowed.*val-loc"),
        ("eval", "loc_split", 3, r"eval\.loc_split = 3: expected a string or null"),
    ],
)
def test_bad_values_name_file_key_and_allowed(
    tmp_path: Path, section: str, key: str, value: object, pattern: str
) -> None:
    doc = {**GOOD, section: {**GOOD[section], key: value}}
    p = _write(tmp_path, doc)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_int_valued_float_coerces_and_float_int_is_refused(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {**GOOD, "train": {"epochs": 4.0}}))
    assert cfg.train.epochs == 4 and isinstance(cfg.train.epochs, int)
    with pytest.raises(ConfigError, match=r"train\.epochs = 2\.5: expected an integer"):
        load_config(_write(tmp_path, {**GOOD, "train": {"epochs": 2.5}}))


def test_malformed_yaml_names_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "method:\n  name: cam\n optim: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "malformed YAML" in str(e.value)


def test_top_level_and_section_shape(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a run config must be a mapping of keys, got a list"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"section 'optim' must be a mapping"):
        load_config(_write(tmp_path, {"optim": [1, 2]}))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/run.yaml")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    """An empty file would silently train the defaults: refused, naming the file."""
    for text in ("", "# only a comment\n", "{}\n"):
        p = _write(tmp_path, text)
        with pytest.raises(ConfigError, match=r"run\.yaml: the run config is empty") as e:
            load_config(p)
        assert "sections: method, loss" in str(e.value)
    assert config_from_dict({}).method.name == "cam"  # defaults stay available in code


def test_flat_overrides_on_load(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD)
    cfg = load_config(
        p,
        overrides={
            "optim.lr": 0.01,
            "method.pooling": "gmp",
            "data.options.difficulty": 0.5,
            "train.batch_size": 4,
        },
    )
    assert cfg.optim.lr == 0.01 and cfg.method.kwargs["pooling"] == "gmp"
    assert dict(cfg.data.options) == {"num_train": 32, "difficulty": 0.5}  # merged, not replaced
    assert cfg.train.batch_size == 4 and cfg.train.epochs == 2  # untouched keys kept
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'; allowed: factor, gamma, lr"):
        load_config(p, overrides={"optim.lrr": 0.01})
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'"):
        load_config(p, overrides={"optimizer.lr": 0.01})
    with pytest.raises(ConfigError, match=r"must look like 'section.name'"):
        load_config(p, overrides={"lr": 0.01})
    with pytest.raises(ConfigError, match=r"'data.foo.bar' is not a data field"):
        load_config(p, overrides={"data.foo.bar": 1})


def test_config_from_flat_over_base() -> None:
    base = config_from_dict(GOOD)
    cfg = config_from_flat({"method.pooling": "gmp", "optim.lr": 3e-4}, base=base)
    assert cfg.method.kwargs["pooling"] == "gmp" and cfg.method.kwargs["backbone"] == "test_resnet"
    assert cfg.optim.lr == 3e-4 and cfg.optim.name == "adamw"
    plain = config_from_flat({"optim.lr": 3e-4})
    assert plain.method.name == "cam" and plain.optim.lr == 3e-4
    with pytest.raises(ConfigError, match=r"<trial>.*method\.lse"):
        config_from_flat({"method.lse": 3.0}, base=base)


def test_merge_flat_does_not_mutate_input() -> None:
    raw = {"data": {"options": {"a": 1}}}
    out = merge_flat(raw, {"data.options.b": 2}, "<t>")
    assert raw == {"data": {"options": {"a": 1}}}
    assert out["data"]["options"] == {"a": 1, "b": 2}


def test_dump_load_roundtrip(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {**GOOD, "data": {**GOOD["data"], "classes": ["Mass", "Nodule"], "root": "/d"}}
    )
    p = tmp_path / "sub" / "config.yaml"
    dump_config(cfg, p)
    again = load_config(p)
    assert again == cfg
    assert again.to_flat() == cfg.to_flat()
    assert again.data.classes == ("Mass", "Nodule")
    # a default config round-trips too
    dump_config(RunConfig(), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == RunConfig()


def test_to_flat_keys_are_section_dot_key() -> None:
    flat = config_from_dict(GOOD).to_flat()
    assert flat["method.name"] == "cam" and flat["method.pooling"] == "lse"
    assert flat["optim.lr"] == pytest.approx(1e-3) and flat["data.options"] == {"num_train": 32}
    assert all(
        k.split(".", 1)[0] in {"method", "loss", "data", "optim", "train", "eval"} for k in flat
    )


def test_loc_split_values(tmp_path: Path) -> None:
    assert RunConfig().eval.loc_split == "auto" == config_from_dict({}).eval.loc_split
    for value in ("auto", "none", "val-loc", None):
        doc = {**GOOD, "eval": {**GOOD["eval"], "loc_split": value}}
        cfg = load_config(_write(tmp_path, doc))
        assert cfg.eval.loc_split == value
        dump_config(cfg, tmp_path / "again.yaml")
        assert load_config(tmp_path / "again.yaml") == cfg
    # the localization split cannot be eval.split itself
    doc = {**GOOD, "eval": {"split": "val-loc", "loc_split": "val-loc"}}
    with pytest.raises(ConfigError, match=r"eval\.loc_split = 'val-loc' is eval\.split itself"):
        load_config(_write(tmp_path, doc))
    assert config_from_flat({"eval.loc_split": "none"}).eval.loc_split == "none"


def test_loc_split_choices_are_non_test_splits_of_the_data_layer() -> None:
    from lesionsweep.config import LOC_SPLIT_CHOICES
    from lesionsweep.data import SPLITS

    names = [c for c in LOC_SPLIT_CHOICES if c not in ("auto", "none")]
    assert names and set(names) <= set(SPLITS)
    assert not any(n.startswith("test") for n in names)


# --- values typed once, at the edge (issue 11.2) and bounds (issue 8) ---------------------------


def test_method_kwargs_are_converted_once_from_the_constructor_annotations(tmp_path: Path) -> None:
    doc = {**GOOD, "method": {"name": "cam", "lse_r": 5, "pooling": "lse", "feature_index": 3.0}}
    cfg = load_config(_write(tmp_path, doc), overrides={"loss.gamma": "2"})
    assert cfg.method.kwargs["lse_r"] == 5.0 and type(cfg.method.kwargs["lse_r"]) is float
    assert type(cfg.method.kwargs["feature_index"]) is int
    assert cfg.loss.kwargs["gamma"] == 2.0 and type(cfg.loss.kwargs["gamma"]) is float


def test_lse_r_string_names_file_key_value_and_type(tmp_path: Path) -> None:
    p = _write(tmp_path, {**GOOD, "method": {"name": "cam", "pooling": "lse", "lse_r": "big"}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (
        f"{p}: method.lse_r = 'big': expected a number (float) or null for method 'cam'"
    )


def test_pooling_typo_lists_the_registered_poolings(tmp_path: Path) -> None:
    p = _write(tmp_path, {**GOOD, "method": {"name": "cam", "pooling": "lsee"}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (
        f"{p}: method.pooling = 'lsee' is not allowed; choose one of: gap, gmp, lse, pcam, wildcat"
    )


@pytest.mark.parametrize(
    ("key", "value", "bounds"),
    [
        ("train.epochs", 1_000_000_000, "[1, 10000]"),
        ("train.batch_size", 10**7, "[1, 65536]"),
        ("data.image_size", 100_000, "[16, 4096]"),
    ],
)
def test_absurd_values_are_refused_with_the_bounds(
    tmp_path: Path, key: str, value: object, bounds: str
) -> None:
    p = _write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides={key: value})
    assert f"{p}: {key} = {value!r} is out of range; allowed: {bounds}" in str(e.value)


def test_pylon_image_size_must_be_a_multiple_of_its_input_multiple(tmp_path: Path) -> None:
    p = _write(tmp_path, {"method": {"name": "pylon"}, "data": {"image_size": 128}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (
        f"{p}: data.image_size = 128 is not allowed for method 'pylon': it needs a multiple "
        "of 256 (e.g. 256)"
    )
    assert load_config(p, overrides={"data.image_size": 256}).data.image_size == 256


def test_binary_and_list_files_are_one_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "weights.yaml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    with pytest.raises(
        ConfigError, match=r"weights\.yaml: not a text file \(byte 0 is not UTF-8\)"
    ):
        load_config(p)
    lst = _write(tmp_path, "- a\n- b\n", name="list.yaml")
    with pytest.raises(ConfigError, match=r"list\.yaml: a run config must be a mapping"):
        load_config(lst, overrides={"optim.lr": 0.1})


def test_set_values_parse_1e_3_as_a_float() -> None:
    from lesionsweep.config import parse_overrides

    assert parse_overrides(["optim.lr=1e-3", "train.epochs=4", "data.classes=[a, b]"]) == {
        "optim.lr": 1e-3,
        "train.epochs": 4,
        "data.classes": ["a", "b"],
    }
    with pytest.raises(ConfigError, match=r"--set 'optim.lr': expected PATH=VALUE"):
        parse_overrides(["optim.lr"])


def test_dataset_names_are_declared_once() -> None:
    import typing

    from lesionsweep.config import DatasetName
    from lesionsweep.data.factory import DATASETS

    assert DATASETS.names() == sorted(typing.get_args(DatasetName))


def test_pooling_defaults_live_only_in_the_pooling_constructors() -> None:
    import inspect

    from lesionsweep.methods import METHODS, POOLINGS, create_method

    r_default = inspect.signature(POOLINGS.get("lse")).parameters["r"].default
    for name in ("cam", "multiscale_cam"):
        assert METHODS.defaults(name)["lse_r"] is None  # "use the pooling's default"
        m = create_method(name, 2, backbone="test_resnet", pooling="lse")
        pools = getattr(m, "pools", None) or [m.pool]
        assert all(p.r == r_default for p in pools)


def _registries() -> list[object]:
    from lesionsweep.data.factory import DATASETS
    from lesionsweep.methods import LOSSES, METHODS, POOLINGS
    from lesionsweep.sweep.samplers import SAMPLERS

    return [METHODS, LOSSES, POOLINGS, DATASETS, SAMPLERS]


@pytest.mark.parametrize("registry", _registries(), ids=lambda r: r.kind)
def test_one_registry_contract_for_every_family(registry: object) -> None:
    from lesionsweep.errors import UnknownNameError

    names = registry.names()
    assert names == sorted(names) and len(names) >= 2
    first = registry.get(names[0])
    with pytest.raises(
        ValueError, match=f"{registry.kind} name '{names[0]}' is already registered"
    ):
        registry.add(names[0], first)
    with pytest.raises(UnknownNameError, match=f"unknown {registry.kind} 'nope'; registered") as e:
        registry.get("nope")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ConfigError)
    assert ", ".join(names) in str(e.value)
