"""Legacy scikit-learn heads import into pickle-free artifacts, only with --trust-pickle."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from headserve.artifact import load_meta
from headserve.errors import ArtifactError
from headserve.head import load_head
from headserve.train.legacy import import_legacy


def legacy_head(tmp_path: Path, n_classes: int = 3, dim: int = 12, **side) -> tuple[Path, object, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, dim)).astype(np.float32)
    y = np.arange(90) % n_classes
    x[np.arange(90), y] += 3
    model = LogisticRegression(max_iter=500).fit(x, y)
    pkl = tmp_path / "old_head.pkl"
    pkl.write_bytes(pickle.dumps(model))
    meta = {"clip_model": "ViT-B-32", "labelmap": {i: f"c{i}" for i in range(n_classes)}, "embedding_dim": dim,
            "proba_mode": "softmax", "background_indices": [n_classes - 1], **side}
    (tmp_path / "old_head.meta.pkl").write_bytes(pickle.dumps(meta))
    return pkl, model, x


def served_probs(artifact: Path, x: np.ndarray) -> np.ndarray:
    _, head = load_head(artifact)
    with torch.no_grad():
        return head(torch.from_numpy(x))[1].numpy()


def test_import_refuses_without_trust_pickle_and_says_why(tmp_path: Path):
    pkl, _, _ = legacy_head(tmp_path)
    with pytest.raises(ArtifactError, match="unpickling runs code.*--trust-pickle"):
        import_legacy(pkl, tmp_path / "out", trust_pickle=False)
    assert not (tmp_path / "out").exists()


def test_imported_head_reproduces_predict_proba_and_reads_as_a_clip_logreg_head(tmp_path: Path):
    pkl, model, x = legacy_head(tmp_path)
    art = import_legacy(pkl, tmp_path / "out", trust_pickle=True)
    meta = load_meta(art)
    assert (meta.encoder.encoder_type, meta.encoder.model, meta.head_type) == ("clip", "ViT-B-32", "logreg")
    assert meta.classes == ["c0", "c1", "c2"] and meta.background_indices == [2]
    assert meta.encoder.name == "clip:ViT-B-32"
    assert np.allclose(served_probs(art, x), model.predict_proba(x), atol=1e-5)
    assert not list(art.glob("*.pkl"))


def test_binary_legacy_head_keeps_its_probabilities(tmp_path: Path):
    pkl, model, x = legacy_head(tmp_path, n_classes=2, classes=["no", "yes"])
    art = import_legacy(pkl, tmp_path / "out", trust_pickle=True)
    assert np.allclose(served_probs(art, x), model.predict_proba(x), atol=1e-5)


def test_sidecar_that_disagrees_with_the_weights_is_refused(tmp_path: Path):
    pkl, _, _ = legacy_head(tmp_path, embedding_dim=99)
    with pytest.raises(ArtifactError, match="do not belong together"):
        import_legacy(pkl, tmp_path / "out", trust_pickle=True)


def test_missing_sidecar_names_the_file_it_expected(tmp_path: Path):
    pkl, _, _ = legacy_head(tmp_path)
    (tmp_path / "old_head.meta.pkl").unlink()
    with pytest.raises(ArtifactError, match=r"old_head\.meta\.pkl does not exist"):
        import_legacy(pkl, tmp_path / "out", trust_pickle=True)


def test_cli_import_legacy_requires_the_flag(tmp_path: Path, capsys):
    from headserve.app.cli import main

    pkl, _, _ = legacy_head(tmp_path)
    assert main(["import-legacy", str(pkl), "--out", str(tmp_path / "out")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["import-legacy", str(pkl), "--out", str(tmp_path / "out"), "--trust-pickle"]) == 0
    assert "unpickling runs code" in capsys.readouterr().out
