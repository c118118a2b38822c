"""save_head / load_head: an artifact rebuilds the exact module that was saved, the temperature lives in
meta.json only, and artifacts written before that keep loading unless they contradict themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from headserve.artifact import WEIGHTS_FILE, HeadMeta, load_meta, save_artifact
from headserve.contract import EncoderIdentity
from headserve.errors import ArtifactError, UnverifiedWeightsWarning, WeightsMismatchError
from headserve.head import HeadConfig, MLPHead, ServingHead, load_head, save_head

DIM, CLASSES = 8, ["a", "b", "c", "bg"]


def _head(temperature: float = 1.7, **config) -> tuple[HeadMeta, ServingHead]:
    """A head whose every tensor differs from its initial value: weights, standardisation, bias, OOD stats."""
    hc = HeadConfig(in_dim=DIM, num_classes=len(CLASSES), **config)
    torch.manual_seed(3)
    head = ServingHead(MLPHead(hc), temperature=temperature)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, t in head.state_dict().items():
            if name != "temperature":
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5 + (1.0 if name.endswith("emb_std") else 0.0))
    meta = HeadMeta(name="h", encoder=EncoderIdentity("clip", "tiny", DIM), classes=list(CLASSES),
                    background_indices=[3], head_type=hc.head_type, head_config=hc.to_dict(), temperature=temperature)
    return meta, head


def _outputs(head: ServingHead) -> list[torch.Tensor]:
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((6, DIM)).astype(np.float32))
    with torch.no_grad():
        return list(head.eval()(x))


@pytest.mark.parametrize("config", [
    dict(hidden=(16,), activation="gelu", layernorm=True, dropout=0.3, standardize=True),
    dict(hidden=(), classifier="arcface", scale=16.0),
    dict(hidden=()),
], ids=["mlp-gelu-ln-std", "arcface-cosine", "logreg"])
def test_a_saved_head_loads_as_the_same_module_with_identical_outputs(config, tmp_path: Path):
    meta, head = _head(**config)
    save_head(tmp_path / "h", meta, head)
    loaded_meta, loaded = load_head(tmp_path / "h")
    assert loaded_meta == load_meta(tmp_path / "h") and loaded_meta.temperature == 1.7
    assert not loaded.training and loaded.head.config == HeadConfig.from_dict(meta.head_config)
    assert type(loaded.head.out) is type(head.head.out)
    assert loaded.state_dict().keys() == head.state_dict().keys()
    for name, t in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    for got, want in zip(_outputs(loaded), _outputs(head)):
        assert torch.equal(got, want)


def test_the_temperature_is_stored_in_meta_json_only(tmp_path: Path):
    meta, head = _head(temperature=2.5)
    save_head(tmp_path / "h", meta, head)
    assert "temperature" not in load_file(str(tmp_path / "h" / WEIGHTS_FILE))
    assert json.loads((tmp_path / "h" / "meta.json").read_text())["temperature"] == 2.5
    assert load_head(tmp_path / "h")[1].temperature.item() == 2.5


def test_an_older_artifact_with_the_temperature_in_its_weights_still_loads(tmp_path: Path):
    meta, head = _head(hidden=(16,))
    tensors = {k: v.numpy() for k, v in head.state_dict().items()}  # as artifacts were written before
    assert "temperature" in tensors
    save_artifact(tmp_path / "old", meta, tensors)
    _, loaded = load_head(tmp_path / "old")
    for got, want in zip(_outputs(loaded), _outputs(head)):
        assert torch.equal(got, want)


def test_an_older_artifact_without_ood_statistics_loads_and_scores_zero(tmp_path: Path):
    meta, head = _head()
    tensors = {k: v.numpy() for k, v in head.state_dict().items() if not k.startswith("ood_")}
    save_artifact(tmp_path / "old", meta, tensors)
    logits, probs, ood = _outputs(load_head(tmp_path / "old")[1])
    want_logits, want_probs, _ = _outputs(head)
    assert torch.equal(logits, want_logits) and torch.equal(probs, want_probs)
    assert torch.equal(ood, torch.zeros_like(ood))


def test_a_stored_temperature_that_disagrees_with_meta_is_refused_naming_both_and_the_file(tmp_path: Path):
    meta, head = _head(temperature=1.7)
    tensors = {k: v.numpy() for k, v in head.state_dict().items()}
    tensors["temperature"] = np.array([2.0], dtype=np.float32)
    save_artifact(tmp_path / "bad", meta, tensors)
    weights = tmp_path / "bad" / WEIGHTS_FILE
    with pytest.raises(ArtifactError, match=rf"{weights} stores temperature \[2\.0\] but meta\.json says 1\.7"):
        load_head(tmp_path / "bad")


def test_a_truncated_weights_file_gives_the_clear_artifact_error(tmp_path: Path):
    meta, head = _head()
    save_head(tmp_path / "h", meta, head)
    weights = tmp_path / "h" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=rf"{weights} is not a readable safetensors file .*retrain"):
        load_head(tmp_path / "h")


def test_weights_that_do_not_fit_the_recorded_head_config_are_an_artifact_error(tmp_path: Path):
    meta, head = _head(hidden=(16,))
    save_head(tmp_path / "h", meta, head)
    path = tmp_path / "h" / "meta.json"
    data = json.loads(path.read_text())
    data["head_config"]["hidden"] = [12]
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"head\.safetensors: the weights do not fit head_config .*size mismatch"):
        load_head(tmp_path / "h")


def test_a_head_config_that_contradicts_the_classes_is_an_artifact_error(tmp_path: Path):
    meta, head = _head()
    save_head(tmp_path / "h", meta, head)
    path = tmp_path / "h" / "meta.json"
    data = json.loads(path.read_text())
    data["classes"] = ["a", "b", "c"]
    data["background_indices"] = []
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"4 classes, but meta\.json has embedding_dim 8 and 3 classes"):
        load_head(tmp_path / "h")


def test_saving_a_module_whose_temperature_differs_from_meta_is_refused_and_writes_nothing(tmp_path: Path):
    meta, head = _head(temperature=1.7)
    with torch.no_grad():
        head.temperature.fill_(1.0)
    with pytest.raises(ArtifactError, match=r"meta\.temperature 1\.7 disagrees with the module's temperature 1\.0"):
        save_head(tmp_path / "h", meta, head)
    assert not list(tmp_path.iterdir())


def test_weights_from_another_artifact_of_the_same_shape_are_refused_naming_both_files(tmp_path: Path):
    meta, head = _head()
    save_head(tmp_path / "h", meta, head)
    other_meta, other = _head()
    with torch.no_grad():
        other.head.out.weight.mul_(-1.0)  # same shape and classes, other numbers
    save_head(tmp_path / "other", other_meta, other)
    (tmp_path / "h" / WEIGHTS_FILE).write_bytes((tmp_path / "other" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(WeightsMismatchError, match=rf"{tmp_path / 'h' / WEIGHTS_FILE} \(sha256 \w{{12}}\.\.\.\) is not "
                                                   rf"the weights file that {tmp_path / 'h' / 'meta.json'} was saved "
                                                   r"with .*copy meta\.json and head\.safetensors of one artifact"):
        load_head(tmp_path / "h")


def test_an_artifact_saved_before_the_weights_digest_loads_with_a_warning_naming_it(tmp_path: Path):
    meta, head = _head()
    save_head(tmp_path / "h", meta, head)
    path = tmp_path / "h" / "meta.json"
    data = json.loads(path.read_text())
    assert len(data.pop("weights_sha256")) == 64
    path.write_text(json.dumps(data))
    with pytest.warns(UnverifiedWeightsWarning, match=rf"{path} records no digest of head\.safetensors"):
        _, loaded = load_head(tmp_path / "h")
    for got, want in zip(_outputs(loaded), _outputs(head)):
        assert torch.equal(got, want)
