"""Streaming embedding: each image decoded once, flat memory, bad images skipped, precision checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from headserve.backbones import encoder_graph, load_encoder
from headserve.encoders import get_encoder
from headserve.errors import DatasetError, PrecisionError
from headserve.train import decode as decode_module
from headserve.train import embed as embed_module
from headserve.train.cache import EmbeddingCache
from headserve.train.dataset import load_crop, read_yolo
from headserve.train.embed import EmbedConfig, embed_crops, extract
from headserve.train.synth import SynthConfig, build_digits_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits_dataset(tmp_path_factory.mktemp("digits"), SynthConfig(num_images=12))


@pytest.fixture(scope="module")
def clip():
    loaded = load_encoder(get_encoder("clip:tiny"))
    return loaded.spec, encoder_graph(loaded)


def _run(dataset: Path, clip, config: EmbedConfig = EmbedConfig(batch_size=7), **kw):
    spec, graph = clip
    data = read_yolo(dataset)
    objects = data.objects
    run = extract([o.image for o in objects], [o.box for o in objects], graph, spec.preprocess, spec.embedding_dim,
                  config, **kw)
    return data, objects, run


def test_streamed_embeddings_equal_embedding_each_crop_in_memory(dataset, clip):
    spec, graph = clip
    data, objects, run = _run(dataset, clip, EmbedConfig(batch_size=5, workers=3))
    reference = embed_crops(graph, [load_crop(o) for o in objects], spec.preprocess)
    assert run.ok.all() and not run.failures
    assert np.abs(np.asarray(run.emb) - reference).max() < 1e-5
    assert isinstance(run.emb, np.memmap)  # on disk, not in the process's heap
    assert (run.device, run.precision) == ("cpu", "fp32")


def test_each_image_is_decoded_once_for_all_its_objects(dataset, clip, monkeypatch):
    opened: list[str] = []
    real = decode_module.load_image

    def counting(source, origin=None):  # a spy: the real decoder runs, the call is counted
        opened.append(str(source))
        return real(source, origin)

    monkeypatch.setattr(decode_module, "load_image", counting)  # the built-in path's decoding (train/decode.py)
    data, objects, run = _run(dataset, clip)
    assert len(objects) > len({o.image for o in objects})  # several objects per image
    assert sorted(opened) == sorted({str(o.image) for o in objects})


def test_a_truncated_image_is_skipped_with_its_objects_and_reported(dataset, clip, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    data = read_yolo(copy)
    victim = data.objects[0].image
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])  # header intact, pixels cut
    _, objects, run = _run(copy, clip)
    lost = [o.image == victim for o in objects]
    assert run.failures and run.failures[0][0] == str(victim)
    assert not run.ok[lost].any() and run.ok[~np.asarray(lost)].all()


def test_training_skips_a_truncated_image_and_strict_mode_refuses_it(dataset, tmp_path):
    import shutil

    from headserve.train.pipeline import TrainRequest, prepare

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    victim = read_yolo(copy).objects[0].image
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
    req = TrainRequest(dataset=copy, encoder=get_encoder("clip:tiny"), out=tmp_path / "head")
    prepared = prepare(req)
    assert all(o.image != victim for o in prepared.objects)
    assert any(str(victim) in p for p in prepared.data.report.problems)
    assert prepared.data.report.counts["unreadable image"] == 1
    assert len(prepared.emb) == len(prepared.objects) == len(prepared.labels)
    with pytest.raises(DatasetError, match=str(victim)):
        prepare(TrainRequest(dataset=copy, encoder=get_encoder("clip:tiny"), out=tmp_path / "head2", strict=True))


def test_a_box_that_cannot_be_cropped_costs_only_its_own_object(dataset, clip):
    spec, graph = clip
    objects = read_yolo(dataset).objects
    image = next(o.image for o in objects if sum(p.image == o.image for p in objects) >= 2)
    siblings = [i for i, o in enumerate(objects) if o.image == image]
    boxes = [o.box for o in objects]
    boxes[siblings[0]] = (5000.0, 5000.0, 5010.0, 5010.0)  # outside the image: this crop alone fails
    run = extract([o.image for o in objects], boxes, graph, spec.preprocess, spec.embedding_dim)
    assert not run.failures  # the image itself decoded
    assert [i for i, _ in run.bad_crops] == [siblings[0]] and "lies outside" in run.bad_crops[0][1]
    assert run.ok.sum() == len(objects) - 1 and run.ok[siblings[1:]].all()


def test_bf16_runs_on_the_cpu_after_its_check_and_caches_apart_from_fp32(dataset, clip, tmp_path):
    spec, graph = clip
    caches = {p: EmbeddingCache(tmp_path, spec.encoder_type, spec.model_id, "sha256:x", p) for p in ("fp32", "bf16")}
    _, _, fp32 = _run(dataset, clip, EmbedConfig(precision="fp32"), cache=caches["fp32"])
    _, _, bf16 = _run(dataset, clip, EmbedConfig(precision="bf16"), cache=caches["bf16"])
    assert bf16.precision == "bf16" and 0.995 <= bf16.min_cosine < 1.0
    assert caches["fp32"].dir != caches["bf16"].dir
    assert caches["bf16"].stats.misses == len(bf16.ok)  # nothing was taken from the fp32 entries
    cos = (np.asarray(fp32.emb) * np.asarray(bf16.emb)).sum(1)
    assert cos.min() > 0.99 and not np.array_equal(np.asarray(fp32.emb), np.asarray(bf16.emb))


def test_an_encoder_that_overflows_in_fp16_is_refused_before_the_run_proceeds(dataset, tmp_path):
    loaded = load_encoder(get_encoder("clip:tiny"))
    with torch.no_grad():  # weights scaled so activations pass fp16's 65504: the known DINOv3 failure, reproduced
        loaded.backbone.visual.conv1.weight.mul_(1e5)
    graph = encoder_graph(loaded)
    with pytest.raises(PrecisionError, match=r"at fp16 are NaN or infinite.*`precision` fp32 or bf16"):
        _run(dataset, (loaded.spec, graph), EmbedConfig(precision="fp16"))


def test_openvino_extraction_equals_the_compiled_export_and_records_its_engine_and_check(dataset, clip, tmp_path):
    pytest.importorskip("openvino")
    from headserve.export.engine import compile_graph, cpu_capabilities

    spec, graph = clip
    precision = "bf16" if "BF16" in cpu_capabilities() else "fp32"  # bf16 where this CPU computes it
    config = EmbedConfig(batch_size=7, engine="openvino", precision=precision)
    cache = EmbeddingCache(tmp_path, spec.encoder_type, spec.model_id, "fp", precision, "openvino")
    data, objects, run = _run(dataset, clip, config, cache=cache)
    served = compile_graph(graph, spec.name, spec.preprocess.input_size, "openvino", precision)
    pixels = np.stack([embed_module.resize_for_encoder(load_crop(o), spec.preprocess) for o in objects])
    assert run.ok.all() and np.abs(np.asarray(run.emb) - served(pixels)).max() < 1e-5
    assert (run.engine, run.precision, run.device) == ("openvino", precision, "cpu")
    assert run.min_cosine is not None and run.min_cosine >= 0.999
    assert 0.0 < run.check_seconds < run.seconds  # the one-time comparison is timed, inside the extraction's time
    assert cache.stats.misses == len(objects) and cache.dir.name == f"fp_openvino_{precision}"


def test_cache_keys_differ_by_engine_and_precision(tmp_path):
    dirs = {(engine, precision): EmbeddingCache(tmp_path, "clip", "tiny", "fp", precision, engine).dir
            for engine in ("torch", "openvino") for precision in ("fp32", "bf16")}
    assert len(set(dirs.values())) == 4
    assert dirs["torch", "fp32"].name == "fp" and dirs["torch", "bf16"].name == "fp_bf16"  # older caches still read


def test_openvino_extraction_refuses_a_gpu_device_and_a_precision_it_does_not_run():
    from headserve.errors import ConfigError

    with pytest.raises(ConfigError, match=r"device cuda: `engine` openvino runs on the CPU; use `device` cpu or `engine` torch"):
        EmbedConfig(engine="openvino", device="cuda")
    with pytest.raises(ConfigError, match=r"precision fp16: OpenVINO embeds in fp32 or bf16"):
        EmbedConfig(engine="openvino", precision="fp16")
