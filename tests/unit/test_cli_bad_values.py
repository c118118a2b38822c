"""Every command of `headserve`, given one bad value, says so in one line naming it and exits 2: no traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from headserve.app.cli import EXIT_BAD_INPUT, build_parser, main

# (command words, the rest of argv, what the one line must contain: the bad value, named by its flag where one
# flag set it). Paths are relative to a scratch directory holding an empty dataset `ds/` and a file `crop.png`.
CASES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("demo",), ("--out", "o", "--images", "0"), "--images 0: the demo dataset needs at least one image"),
    (("train",), ("ds", "--out", "o", "--bg", "0"), "--bg 0: the number of background classes must be at least 1"),
    (("sweep",), ("ds", "--out", "o", "--seeds", "42,42"), "sweep seeds (42, 42) must be distinct"),
    (("embed",), ("ds", "--out", "o", "--shard-rows", "0"), "--shard-rows 0: a shard holds at least one crop"),
    (("import-legacy",), ("gone.pkl", "--out", "o", "--trust-pickle"), "gone.pkl does not exist"),
    (("export", "encoder"), ("clip:tiny", "--repo", "r", "--cpu-threads", "-1"), "--cpu-threads -1: use 0"),
    (("export", "head"), ("gone", "--repo", "r"), "gone/meta.json does not exist"),
    (("export", "multi-head"), ("ghost_a", "ghost_b", "--repo", "r"), "head 'ghost_a' is not in r"),
    (("export", "prompts"), ("ghost", "--prompt", "cat:a cat", "--repo", "r"), "export head 'ghost' before its prompts"),
    (("export", "example"), ("--repo", "r", "--instances", "0"), "--instances 0: a model needs at least one instance"),
    (("export", "encoded"), ("ghost", "--repo", "r"), "export head 'ghost' before its encoded-image variant"),
    (("repo", "validate"), ("gone",), "gone: is not a directory"),
    (("repo", "list"), ("gone",), "model repository gone is not a directory"),
    (("serve",), ("r", "--grpc-port", "70000"), "--grpc-port 70000: a port is 1 to 65535"),
    (("soak",), ("--clients", "0"), "--clients 0: a soak needs at least one client"),
    (("classify",), ("--head", "h", "--min-confidence", "2", "crop.png"), "min_confidence=2.0 is outside [0, 1]"),
    (("gate",), ("--head", "h", "--target", "t", "--timeout", "0", "crop.png"), "timeout_s=0.0 must be positive"),
    (("drift",), ("gone", "w.jsonl", "--out", "o", "--class-psi", "0"), "class_psi=0.0 must be positive (--class-psi 0.0)"),
    (("report",), ("gone", "--out", "o", "--p-value", "1.5"), "must be a p-value in (0, 1) (--p-value 1.5)"),
]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every runnable command path of the parser (`export head`, `serve`, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {prefix}
    return set().union(*(_commands(p, prefix + (name,)) for name, p in subs[0].choices.items()))


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels").mkdir()
    (tmp_path / "crop.png").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_command_has_a_bad_value_case():
    assert _commands(build_parser()) == {words for words, _, _ in CASES}


@pytest.mark.parametrize("words, rest, named", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_value_is_one_line_naming_it_and_exit_status_2(words, rest, named, scratch, capsys):
    code = main([*words, *rest])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "Traceback" not in err
    first, *more = err.strip().splitlines()
    assert first.startswith(f"headserve {words[0]}: error: "), err
    # `repo validate` lists each problem it found under its one-line summary; every other command says one line.
    assert len(more) == (1 if words == ("repo", "validate") else 0), err
    assert named in (more[0] if more else first), err
    assert not (scratch / "o").exists(), "a refused command writes no output"
    assert not (scratch / "r").exists(), "a refused command creates no repository"


def test_the_console_script_maps_a_library_error_to_one_line_and_status_2(scratch):
    script = Path(sys.executable).with_name("headserve")
    done = subprocess.run([str(script), "soak", "--seconds", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stderr.strip() == "headserve soak: error: --seconds 0.0: the soak's time budget must be positive"


def test_the_library_names_the_config_field_and_the_command_line_names_its_flag():
    from headserve.app.cli import error_line
    from headserve.app.soak import SoakConfig
    from headserve.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        SoakConfig(clients=0)
    assert str(caught.value) == "clients 0: a soak needs at least one client"
    assert error_line(caught.value) == "--clients 0: a soak needs at least one client"


def test_an_error_about_the_setting_that_would_fix_it_gets_that_flag_appended():
    from headserve.app.cli import error_line
    from headserve.errors import ArtifactError, HeadserveError

    fixable = ArtifactError("heads/old: the head names no registry encoder").about("encoder_name")
    assert error_line(fixable) == "heads/old: the head names no registry encoder (set it with --encoder)"
    unmapped = HeadserveError.bad_value("ood_quantile", 2.0, "must be in (0, 1)")
    assert error_line(unmapped) == "ood_quantile 2.0: must be in (0, 1)"  # no flag sets it: the field's name stays
