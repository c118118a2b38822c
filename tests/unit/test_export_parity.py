"""The ONNX parity check of head graphs: exact graphs pass at any logit scale, wrong graphs fail."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from headserve.contract import SCORE_OUTPUTS
from headserve.errors import ExportParityError
from headserve.export.onnx_export import export_onnx, head_graph_spec
from headserve.head import HeadConfig, ServingHead, build_serving_head

DIM, CLASSES = 64, 5


def _large_logit_head(classifier: str = "linear") -> ServingHead:
    """A head like `--hidden logreg` fits (standardised embeddings, C up to 1000): logits in the hundreds."""
    torch.manual_seed(0)
    head = build_serving_head(HeadConfig(in_dim=DIM, num_classes=CLASSES, standardize=True, classifier=classifier))
    with torch.no_grad():
        head.head.emb_mean.copy_(torch.randn(DIM) * 0.05)
        head.head.emb_std.copy_(torch.rand(DIM) * 0.02 + 0.01)  # L2-normalised embeddings vary by ~0.02 per axis
        head.head.out.weight.copy_(torch.randn(CLASSES, DIM) * 4.0)
        head.temperature.fill_(3.0)
    return head


def _export(module: ServingHead, path: Path, reference: ServingHead | None = None) -> dict[str, float]:
    return export_onnx(module, head_graph_spec("h", DIM, SCORE_OUTPUTS), path, reference=reference)


def test_an_exact_head_graph_with_logits_in_the_hundreds_passes_parity(tmp_path: Path):
    head = _large_logit_head()
    x = torch.nn.functional.normalize(torch.randn(8, DIM), dim=1)
    with torch.no_grad():
        assert head(x)[0].abs().max() > 100  # where one float32 ulp is already above 1e-5
    diffs = _export(head, tmp_path / "h.onnx")
    assert (tmp_path / "h.onnx").is_file()
    assert diffs["probs"] <= 1e-5 and diffs["ood_score"] <= 1e-5


def _scaled_weight(head: ServingHead) -> None:
    head.head.out.weight.mul_(1.001)  # every weight 0.1% off


def _shifted_bias(head: ServingHead) -> None:
    head.logit_bias[2] += 0.5  # a logit adjustment the served graph would lack


def _swapped_classes(head: ServingHead) -> None:
    head.head.out.weight[[0, 1]] = head.head.out.weight[[1, 0]].clone()


def _other_temperature(head: ServingHead) -> None:
    head.temperature.fill_(1.0)


def _no_standardisation(head: ServingHead) -> None:
    head.head.emb_std.mul_(1.01)


@pytest.mark.parametrize("change, broken", [
    (_scaled_weight, "logits"), (_shifted_bias, "logits"), (_swapped_classes, "argmax(probs)"),
    (_other_temperature, "probs"), (_no_standardisation, "logits"),
], ids=["weight 0.1% off", "bias shifted", "classes swapped", "other temperature", "std 1% off"])
def test_a_graph_that_differs_from_the_head_still_fails_parity_and_nothing_is_written(
        change: Callable[[ServingHead], None], broken: str, tmp_path: Path):
    head = _large_logit_head()
    wrong = copy.deepcopy(head)
    with torch.no_grad():
        change(wrong)
    with pytest.raises(ExportParityError, match=rf"beyond its tolerance \(.*{broken.replace('(', '.').replace(')', '.')}: "):
        _export(head, tmp_path / "h.onnx", reference=wrong)
    assert not list(tmp_path.iterdir()), "a refused graph leaves no file"


def test_an_arcface_head_graph_passes_and_a_wrong_scale_fails(tmp_path: Path):
    head = _large_logit_head("arcface")
    _export(head, tmp_path / "ok.onnx")
    wrong = copy.deepcopy(head)
    wrong.head.out.scale *= 1.001
    with pytest.raises(ExportParityError, match=r"logits: \|diff\| .* where .* is allowed"):
        _export(head, tmp_path / "bad.onnx", reference=wrong)


def test_a_head_whose_weights_hold_nan_is_refused_saying_pytorch_itself_is_not_finite(tmp_path: Path):
    head = _large_logit_head()
    with torch.no_grad():
        head.head.out.weight[0, 0] = float("nan")
    with pytest.raises(ExportParityError, match=r"logits: PyTorch's own output is not finite.*retrain"):
        _export(head, tmp_path / "h.onnx")


def test_the_logit_tolerance_grows_with_the_terms_a_logit_sums_not_with_the_logit():
    head = _large_logit_head()
    x = torch.nn.functional.normalize(torch.randn(4, DIM), dim=1)
    with torch.no_grad():
        logits, magnitude = head(x)[0], head.logit_magnitude(x)
        z = (x - head.head.emb_mean) / head.head.emb_std
        want = z.abs() @ head.head.out.weight.abs().t() + head.head.out.bias.abs()
    assert torch.allclose(magnitude, want, rtol=1e-6)
    assert bool((magnitude >= logits.abs() - 1e-3).all())
    np.testing.assert_array_less(0, magnitude.numpy())


class _Untraceable(torch.nn.Module):
    """A module whose export fails inside the tracer, as an op without an ONNX symbolic would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this graph cannot be traced")


@pytest.mark.parametrize("before", [True, False], ids=["fast path on", "fast path off"])
def test_a_failed_export_leaves_torchs_attention_fast_path_as_it_was(before: bool, tmp_path: Path):
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(before)
    try:
        with pytest.raises(RuntimeError, match="this graph cannot be traced"):
            export_onnx(_Untraceable(), head_graph_spec("h", DIM, SCORE_OUTPUTS), tmp_path / "h.onnx")
        assert torch.backends.mha.get_fastpath_enabled() is before  # the export turned it off for itself only
        assert not list(tmp_path.iterdir()), "a failed export leaves no file"
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
