"""The command line: commands run, and bad input exits non-zero with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lesionsweep.cli import main

TINY = """\
method: {name: cam, backbone: test_resnet, pooling: gmp}
data:
  dataset: phantom
  image_size: 64
  options: {num_train: 16, num_val: 8, num_test: 8}
train: {epochs: 1, batch_size: 8, log_images: 1}
eval: {cam_curve_interval: 0.1}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_train_then_evaluate_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "tiny.yaml", TINY)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    table = capsys.readouterr().out  # a compact headline table by default
    assert "best epoch 1 of 1" in table and "val/auroc_macro" in table
    assert (run / "checkpoints" / "best.pt").is_file()
    assert main(["train", str(cfg), "--out", str(run), "--json"]) == 0  # resumes: finished
    assert json.loads(capsys.readouterr().out)["best_epoch"] == 1
    metrics_file = tmp_path / "m.json"
    args = ["evaluate", str(run), "--split", "test-loc", "--out", str(metrics_file)]
    assert main(args) == 0
    compact = capsys.readouterr().out
    assert "test-loc/auroc_macro" in compact and str(metrics_file) in compact
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "test-loc/auroc_macro" in printed
    written = json.loads(metrics_file.read_text())
    assert written["split"] == "test-loc"
    assert written["metrics"]["test-loc/auroc_macro"] == printed["test-loc/auroc_macro"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("method: {name: cam, poolin: gap}\n", "method.poolin"),
        ("method: {name: nope}\n", "method.name = 'nope'"),
        ("train: {epochz: 1}\n", "train.epochz"),
        ("optim: {name: adagrad}\n", "optim.name = 'adagrad'"),
        ("method: [\n", "malformed YAML"),
        ("eval: {split: test}\n", "evaluate"),
    ],
)
def test_bad_configs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    cfg = _write(tmp_path / "bad.yaml", text)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lesionsweep: error:") and needle in err and "bad.yaml" in err
    assert len(err.splitlines()) <= 6  # one message (YAML errors quote the offending line)
    assert not (tmp_path / "run").exists()


def test_missing_config_and_missing_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = _write(tmp_path / "nih.yaml", f"data: {{dataset: nih, root: {tmp_path / 'nih'}}}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert str(tmp_path / "nih") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cache_preview_and_methods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["cache", str(cache), "--image-size", "64", "--splits", "train,val"]
    args += ["--set", "data.options.num_train=4", "--set", "data.options.num_val=2"]
    assert main(args) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_items"] == 4
    assert (
        main(["preview", "--out", str(tmp_path / "p.png"), "--n", "2", "--image-size", "64"]) == 0
    )
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    for name in ("cam", "pylon", "multiscale_cam", "minmax_entropy", "wsmis", "focal"):
        assert name in listed


# --- bad input: exit 2, one line, no traceback, nothing written (issue 8) ------------------------

LESIONSWEEP = Path(sys.executable).parent / "lesionsweep"  # the installed console script

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
SPACE = "name: tiny\nparameters:\n  optim.lr: {float: [1.0e-4, 1.0e-2], log: true}\n"
SPEC = "name: s\nbase: {method.backbone: test_resnet, train.epochs: 1}\n"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("lesionsweep: error: ")
    return lines[0][len("lesionsweep: error: ") :]


@pytest.mark.parametrize(
    ("inputs", "argv", "expected"),
    [
        (
            {"model.pt": PNG},
            ["sweep", "model.pt"],
            "model.pt: not a text file (byte 0 is not UTF-8); expected a YAML sweep spec",
        ),
        (
            {"list.yaml": "- a\n- b\n"},
            ["sweep", "list.yaml", "--set", "budget.trials=2"],
            "list.yaml: a sweep spec must be a mapping of keys, got a list; keys: name,",
        ),
        (
            {"run.yaml": "train: {epochs: 1000000000}\n"},
            ["train", "run.yaml"],
            "run.yaml: train.epochs = 1000000000 is out of range; allowed: [1, 10000]",
        ),
        (  # checked against timm's registry while Ray starts, before anything is written
            {
                "bb.yaml": "parameters:\n  method.backbone: {choice: [test_resnet, resnt18]}\n",
                "s.yaml": "name: s\nbase: {train.epochs: 1}\nspaces: [bb.yaml]\n",
            },
            ["sweep", "s.yaml", "--quiet"],
            "bb.yaml: parameter: method.backbone = 'resnt18' is not a timm model; give a name "
            "from timm.list_models()",
        ),
    ],
)
def test_real_entry_point_bad_input_exits_2_with_one_line(
    tmp_path: Path, inputs: dict[str, str | bytes], argv: list[str], expected: str
) -> None:
    """The installed ``lesionsweep`` executable, in a fresh process."""
    for name, body in inputs.items():
        p = tmp_path / name
        p.write_bytes(body) if isinstance(body, bytes) else p.write_text(body)
    before = _files(tmp_path)
    proc = subprocess.run(
        [str(LESIONSWEEP), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc.stderr).startswith(expected)
    assert proc.stdout == ""
    assert _files(tmp_path) == before  # nothing written


@pytest.mark.parametrize(
    ("inputs", "argv", "expected"),
    [
        (
            {"run.yaml": PNG},
            ["train", "run.yaml"],
            "run.yaml: not a text file (byte 0 is not UTF-8); expected a YAML run config",
        ),
        (
            {"run.yaml": "- a\n"},
            ["train", "run.yaml", "--set", "optim.lr=0.1"],
            "run.yaml: a run config must be a mapping of keys, got a list; sections: method,",
        ),
        (
            {"run.yaml": ""},
            ["train", "run.yaml"],
            "run.yaml: the run config is empty; nothing would be configured; sections: method,",
        ),
        (
            {"spec.yaml": "# nothing yet\n"},
            ["sweep", "spec.yaml"],
            "spec.yaml: the sweep spec is empty; nothing would be configured; keys: name,",
        ),
        (
            {"run.yaml": "method: {name: cam, pooling: lse, lse_r: big}\n"},
            ["train", "run.yaml"],
            "run.yaml: method.lse_r = 'big': expected a number (float) or null for method 'cam'",
        ),
        (
            {},
            ["sweep", "--set", "storage=ftp://host/sweeps"],
            "<demo spec>: storage = 'ftp://host/sweeps': unsupported URI scheme 'ftp'; use a "
            "local folder or one of: file://, s3://",
        ),
        (
            {"tiny.yaml": SPACE},
            ["sweep", "tiny.yaml"],
            "tiny.yaml: this is a search space, not a sweep spec; list it in a spec's `spaces:` "
            "(spaces: [tiny.yaml]), or run it with the demo settings: "
            "lesionsweep sweep --set spaces=[tiny.yaml]",
        ),
        (
            {"typo.yaml": "parameters:\n  method.pooling: {choice: [gap, lsee]}\n", "s.yaml": SPEC},
            ["sweep", "s.yaml", "--set", "spaces=[typo.yaml]"],
            "typo.yaml: parameter method.pooling = 'lsee' is not allowed; choose one of: gap, "
            "gmp, lse, pcam, wildcat",
        ),
        (
            {"s.yaml": SPEC + "data: {image_size: 128}\nspaces: [pylon]\n"},
            ["sweep", "s.yaml"],
            "s.yaml: data.image_size = 128 in the spec's data contradicts space 'pylon'",
        ),
        (
            {"s.yaml": SPEC + "data: {dataset: nih, root: missing}\n"},
            ["sweep", "s.yaml"],
            "s.yaml: data.root = 'missing' for dataset 'nih' does not exist on this machine",
        ),
        (
            {"run.yaml": "optim: {lr: 0.1}\n"},
            ["train", "run.yaml", "--set", "lr=0.1"],
            "run.yaml: key 'lr' must look like 'section.name'",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    inputs: dict[str, str | bytes],
    argv: list[str],
    expected: str,
) -> None:
    """The same entry function in-process (the executable costs seconds per start)."""
    monkeypatch.chdir(tmp_path)
    for name, body in inputs.items():
        p = tmp_path / name
        p.write_bytes(body) if isinstance(body, bytes) else p.write_text(body)
    before = _files(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err).startswith(expected)
    assert captured.out == ""
    assert _files(tmp_path) == before


def test_every_set_option_has_one_convention() -> None:
    """``--set PATH=VALUE`` (a dotted path into the command's YAML) on every command."""
    import argparse

    from lesionsweep.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    seen = []
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if "--set" in action.option_strings:
                seen.append(name)
                assert action.metavar == "PATH=VALUE", name
                assert "dotted PATH" in (action.help or ""), name
    assert {"train", "evaluate", "cache", "sweep"} <= set(seen)


def test_version_and_compact_evaluate_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lesionsweep.cli import headline_table

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("lesionsweep ")
    with pytest.raises(SystemExit) as e:  # evaluate names its split explicitly
        main(["evaluate", str(tmp_path)])
    assert e.value.code == 2 and "--split" in capsys.readouterr().err
    table = headline_table(
        {"val/auroc_macro": 0.9, "val/auroc/nodule": 0.8, "val/pxap": 0.25, "epoch": 3.0}, "best"
    )
    assert "val/auroc_macro" in table and "val/pxap" in table
    assert "nodule" not in table and "epoch" not in table
