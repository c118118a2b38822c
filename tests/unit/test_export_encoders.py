"""Every registered encoder family can be tested offline: it has a loader and a tiny twin that exports exactly."""

from __future__ import annotations

import numpy as np
import pytest

from headserve.backbones import LOADERS, encoder_graph, load_encoder
from headserve.encoders import FAMILIES, REGISTRY, encoder_types, get_encoder, tiny_twin
from headserve.export.onnx_export import EncoderExport, encoder_graph_spec, export_onnx


@pytest.mark.parametrize("family", sorted(set(encoder_types()) | set(FAMILIES)))
def test_every_registered_encoder_family_has_a_tiny_twin_and_a_loader(family):
    twin = tiny_twin(family)
    assert twin is not None, f"encoder family {family!r} has no tiny twin; add one to headserve/encoders.py"
    assert family in LOADERS, f"encoder family {family!r} has no loader in headserve/backbones.py"


@pytest.mark.parametrize("family", encoder_types())
def test_each_tiny_twin_exports_to_onnx_within_1e_5_of_pytorch(family, tmp_path):
    spec = tiny_twin(family)
    graph = encoder_graph(load_encoder(spec))
    diffs = export_onnx(EncoderExport(graph), encoder_graph_spec(spec.name, spec.preprocess.input_size),
                        tmp_path / "model.onnx")
    assert set(diffs) == {"embedding", "head_input"}
    assert max(diffs.values()) <= 1e-5
    assert np.isfinite(list(diffs.values())).all()


def test_dinov2_is_registered_as_the_public_fallback_family():
    names = {n for n, s in REGISTRY.items() if s.encoder_type == "dinov2" and not s.is_tiny}
    assert names == {"dinov2:vits14", "dinov2:vitb14", "dinov2:vitl14"}
    assert get_encoder("dinov2:vitb14").embedding_dim == 768


def test_a_missing_dinov2_weights_directory_fails_naming_it_and_the_way_out(tmp_path):
    from headserve.errors import EncoderLoadError

    missing = str(tmp_path / "no-such-dinov2")
    with pytest.raises(EncoderLoadError, match=rf"could not load DINOv2 {missing} .*`encoder_weights` DIR"):
        load_encoder(get_encoder("dinov2:vits14").with_weights(missing))
