"""A user's path on the timm DINOv3 and V-JEPA 2 families, as processes: `headserve train`, `export head`,
then `classify` against the real tritonserver; and the same head refused on the other DINOv3 loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADS = {"t_owls": "dinov3-timm:tiny", "t_bats": "vjepa2:tiny"}


def headserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headserve.app", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(digits_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("families")
    artifacts = {}
    for head, encoder in HEADS.items():
        artifacts[head] = root / head
        done = headserve("train", str(digits_dataset), "--out", str(artifacts[head]), "--name", head,
                         "--encoder", encoder, "--hidden", "16", "--epochs", "3")
        assert done.returncode == 0, done.stderr[-2000:]
        done = headserve("export", "head", str(artifacts[head]), "--repo", str(root / "repo"))
        assert done.returncode == 0, done.stderr[-2000:]
    return root, artifacts


def test_heads_on_both_families_classify_through_the_real_server_as_pytorch_does(trained, digits_dataset, tmp_path):
    from headserve.artifact import load_meta
    from headserve.backbones import encoder_graph, load_encoder
    from headserve.contract import SCORE_OUTPUTS
    from headserve.encoders import get_encoder
    from headserve.head import load_head
    from headserve.preprocess import prepare_batch
    from headserve.server import LocalTriton, ServerConfig

    root, artifacts = trained
    crops = sorted((digits_dataset / "images").glob("*.png"))[:4]  # whole images, one crop each
    with LocalTriton(ServerConfig(repository=root / "repo")) as server:
        for head, encoder in HEADS.items():
            out = tmp_path / f"{head}.jsonl"
            done = headserve("classify", "--head", head, "--url", server.grpc_url, "--timeout", "30",
                             "--output", str(out), "--top-k", "4", *map(str, crops))
            assert done.returncode == 0, done.stderr[-2000:]
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            meta, module = load_head(artifacts[head])
            assert meta.encoder.encoder_type == encoder.split(":")[0] and meta.encoder.name == encoder
            with torch.no_grad():
                emb = encoder_graph(load_encoder(get_encoder(encoder)))(
                    torch.from_numpy(prepare_batch(crops, meta.preprocess_spec)))
                probs = module(emb)[SCORE_OUTPUTS.index("probs")].numpy()
            assert [r["image"] for r in rows] == [str(c) for c in crops]
            for row, p in zip(rows, probs):
                served = {label: score for label, score in row["top_k"]}
                want = {load_meta(artifacts[head]).classes[i]: float(p[i]) for i in np.argsort(-p)[:4]}
                assert served.keys() == want.keys(), head
                assert max(abs(served[k] - want[k]) for k in want) <= 1e-5, head


def test_a_timm_dinov3_head_is_refused_on_the_transformers_dinov3_encoder_naming_both(trained, tmp_path):
    _, artifacts = trained
    done = headserve("export", "head", str(artifacts["t_owls"]), "--repo", str(tmp_path / "repo"),
                     "--encoder", "dinov3:tiny")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "dinov3-timm:vit_small_patch16_dinov3" in done.stderr and "dinov3:tiny-dinov3" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "repo" / "t_owls").exists()
