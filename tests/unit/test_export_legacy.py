"""`headserve import-legacy`: a scikit-learn pickle becomes a pickle-free artifact and, with --repo, a served head."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from headserve.app.cli import build_parser
from headserve.errors import ArtifactError
from headserve.export.model_config import parse
from headserve.export.validation import validate_repository


def run_cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return args.func(args)


def legacy_pickle(tmp_path: Path) -> Path:
    """A legacy head on the tiny CLIP twin's 32-dim embeddings (the earlier system's file layout)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 32)).astype(np.float32)
    y = np.arange(60) % 3
    x[np.arange(60), y] += 3
    pkl = tmp_path / "old.pkl"
    pkl.write_bytes(pickle.dumps(LogisticRegression(max_iter=300).fit(x, y)))
    meta = {"clip_model": "tiny-ViT", "labelmap": {0: "cat", 1: "dog", 2: "background"}, "embedding_dim": 32,
            "background_indices": [2]}
    (tmp_path / "old.meta.pkl").write_bytes(pickle.dumps(meta))
    return pkl


def test_export_legacy_refuses_to_unpickle_without_trust_pickle(tmp_path):
    pkl = legacy_pickle(tmp_path)
    with pytest.raises(ArtifactError, match="--trust-pickle"):
        run_cli("import-legacy", str(pkl), "--out", str(tmp_path / "art"), "--repo", str(tmp_path / "repo"))
    assert not (tmp_path / "art").exists() and not (tmp_path / "repo").exists()


def test_export_legacy_with_a_repo_writes_a_valid_head_ensemble(tmp_path, capsys):
    pkl = legacy_pickle(tmp_path)
    assert run_cli("import-legacy", str(pkl), "--out", str(tmp_path / "art"), "--trust-pickle",
                   "--repo", str(tmp_path / "repo"), "--encoder", "clip:tiny") == 0
    assert not list((tmp_path / "art").glob("*.pkl"))
    name = json.loads((tmp_path / "art" / "meta.json").read_text())["name"]
    config = parse((tmp_path / "repo" / name / "config.pbtxt").read_text())
    assert json.loads(config.parameters["classes"].string_value) == ["cat", "dog", "background"]
    assert config.parameters["head_type"].string_value == "logreg"
    assert validate_repository(tmp_path / "repo") == []
    assert f"{name} version 1" in capsys.readouterr().out
