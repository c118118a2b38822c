"""What `--help` tells a first-time user: every default it applies, fast, and nothing that never applies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from headserve.app.cli import build_parser
from headserve.app.train import _name_of

DEADLINE_S = 60  # a help screen takes well under a second; this only keeps a stuck import from hanging CI


def _help(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit, match="0"):
        build_parser().parse_args([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_train_help_does_not_import_torch():
    probe = ("import sys\nfrom headserve.app.cli import main\n"
             "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert "--label-smoothing" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "NO TORCH"


def test_train_help_shows_the_default_profiles_knob_values_not_values_that_never_apply(capsys):
    from headserve.train.profiles import profile_config

    text = _help("train", capsys=capsys)
    assert "default without a profile" not in text
    full = profile_config("full")
    # full's values differ from TrainConfig()'s for these knobs: the old help showed the latter
    assert f"(default: from --profile; full: {full.class_weights!r})" in text
    assert f"(default: from --profile; full: {full.hardmine_epochs!r})" in text


def test_train_help_says_the_default_encoder_is_untrained_and_how_the_name_is_chosen(capsys):
    text = _help("train", capsys=capsys)
    assert "(default clip:tiny, an untrained twin with random weights: its numbers mean nothing)" in text
    assert "(default: the dataset folder's name, made a valid model name, and printed)" in text


def test_export_head_help_names_the_encoder_it_uses_by_default(capsys):
    text = _help("export", "head", capsys=capsys)
    assert "(default , " not in text
    assert "(default the encoder the artifact's meta.json names)" in text


def test_classify_help_states_the_default_of_every_threshold_and_address(capsys):
    text = _help("classify", capsys=capsys)
    for phrase in ("(default 127.0.0.1:8001,", "seconds (default 30.0)", "to accept (default 0.5)",
                   "--top-k K how many classes, most probable first, each answer lists (default 3)"):
        assert phrase in text


@pytest.mark.parametrize(("folder", "name"), [
    ("my pets", "my_pets"),
    ("cats.v2", "cats_v2"),
    ("a__b", "a_b"),  # the multi-head separator never appears in a head's name
    ("---", "head"),
])
def test_train_names_an_unnamed_head_after_its_dataset_folder(tmp_path: Path, folder: str, name: str):
    assert _name_of(tmp_path / folder) == name


def test_the_recipe_knows_every_classifier_the_served_head_has():
    from headserve.head import CLASSIFIERS
    from headserve.train.config import CLASSIFIER_NAMES

    assert sorted(CLASSIFIER_NAMES) == sorted(CLASSIFIERS)


def test_report_help_offers_no_failing_thresholds_and_names_the_files_it_writes(capsys):
    text = _help("report", capsys=capsys)
    assert "fail when" not in text and "always exits 0" in text
    assert "with --window: mark DRIFT in the report when the top-1 class mix's PSI exceeds this" in text
    assert "training.md, training.json and training.png without one" in text
    assert "fail (exit 1) when the top-1 class mix's PSI" in _help("drift", capsys=capsys)
