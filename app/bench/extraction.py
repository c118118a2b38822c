"""Embedding extraction at scale (``headserve.app.bench.extraction``): crops/s against the encoder's own rate,
and memory as datasets grow.

1. Throughput: training's extraction (decode each image once in a thread pool, resize, batch, encode)
   over 1,024 crops of 640x480 JPEG photographs, against the same encoder's in-process rate on
   pixels already in memory, same threads, same batch. Decoding is not the bottleneck when the ratio
   is near 1.
2. Memory: ``prepare`` (what ``headserve train`` runs before fitting) on 1k, 10k and 50k crops, each
   in a fresh process, peak RSS read from the kernel. The encoder is DINOv3 ViT-S/16's stem (patch
   embedding and register tokens, no blocks): the real input size (224 px crops) and width (384-dim
   embeddings), so what memory holds per crop is real, without the compute (which memory does not depend
   on) so that 50k crops fit the benchmark's time.
3. On a CUDA machine: extraction of ViT-B/16 and ViT-L/16 in fp32 and bf16 against the FLOP floor.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headserve.app.bench.repository import WEIGHTS_DIR, stand_in
from headserve.app.bench.timing import call_seconds, peak_rss_mib

IMAGE_SIZE = (640, 480)  # width, height of the generated photographs
OBJECTS_PER_IMAGE = 8
MEMORY_RUN_TIMEOUT_S = 3600.0  # one memory run (50k crops through the stem takes minutes on 2 cores)


@dataclass(frozen=True)
class ExtractionBench:
    """Sizes of the extraction benchmark."""

    throughput_crops: int = 1024  # crops of the throughput runs
    throughput_encoders: tuple[str, ...] = ("clip:ViT-B-32", "dinov3:vits16")
    memory_crops: tuple[int, ...] = (1_000, 10_000, 50_000)  # dataset sizes of the memory runs
    memory_layers: int = 0  # blocks of the memory runs' DINOv3 ViT-S/16 (0: the stem alone)
    gpu_encoders: tuple[str, ...] = ("dinov3:vitb16", "dinov3:vitl16")
    gpu_crops: int = 8192
    weights_dir: Path = WEIGHTS_DIR  # where the random-weight checkpoints are kept


SMOKE = ExtractionBench(throughput_crops=64, throughput_encoders=(), memory_crops=(200, 800), gpu_encoders=())


def write_photo_dataset(root: Path, images: int, seed: int = 0) -> Path:
    """``images`` 640x480 JPEGs cut from scikit-image's photographs, each with 8 labelled boxes."""
    import skimage.data as data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.fromarray(a).convert("RGB") for a in (data.astronaut(), data.coffee(), data.chelsea(),
                                                           data.rocket(), data.brick(), data.grass())]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names: [a, b, c, d]\n")
    w, h = IMAGE_SIZE
    scaled = [src.resize((int(w * scale), int(h * scale))) for src in sources for scale in (1.3, 1.6, 2.0)]
    for i in range(images):
        big = scaled[int(rng.integers(len(scaled)))]  # resized once: the windows differ, the decode cost is real
        x, y = int(rng.integers(0, big.width - w)), int(rng.integers(0, big.height - h))
        big.crop((x, y, x + w, y + h)).save(root / "images" / f"{i:06d}.jpg", quality=90)
        lines = []
        for k in range(OBJECTS_PER_IMAGE):  # a 4x2 grid of boxes, jittered
            cx, cy = (k % 4 + 0.5) / 4 + rng.uniform(-0.05, 0.05), (k // 4 + 0.5) / 2 + rng.uniform(-0.1, 0.1)
            bw, bh = rng.uniform(0.1, 0.22), rng.uniform(0.2, 0.4)
            lines.append(f"{k % 4} {cx:.4f} {cy:.4f} {bw:.4f} {bh:.4f}")
        (root / "labels" / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    return root


def _subset(full: Path, images: int, root: Path) -> Path:
    """The first ``images`` images of ``full`` as a dataset of symbolic links."""
    for part in ("images", "labels"):
        (root / part).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        for part, ext in (("images", "jpg"), ("labels", "txt")):
            (root / part / f"{i:06d}.{ext}").symlink_to(full / part / f"{i:06d}.{ext}")
    (root / "data.yaml").write_text((full / "data.yaml").read_text())
    return root


def run(out: Path, smoke: bool = False, bench: ExtractionBench | None = None) -> list[str]:
    bench = bench or (SMOKE if smoke else ExtractionBench())
    lines = ["## Embedding extraction at scale (`headserve.app.bench.extraction`)", ""]
    with tempfile.TemporaryDirectory(prefix="headserve-extract-") as tmp:
        root = Path(tmp)
        largest = max(bench.memory_crops + (bench.throughput_crops, bench.gpu_crops if bench.gpu_encoders else 0))
        print(f"  writing {largest // OBJECTS_PER_IMAGE} photographs ...", flush=True)
        full = write_photo_dataset(root / "full", -(-largest // OBJECTS_PER_IMAGE))
        lines += _throughput(bench, full, root)
        lines += _memory(bench, full, root)
        lines += _gpu(bench, full, root)
    return lines


# ---------------------------------------------------------------------------------------------


def _encoder_rate(graph, size: int, batch: int, repeats: int = 3) -> float:
    """The encoder's own in-process rate on pixels already in memory (best of ``repeats``)."""
    import torch

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    device = next(graph.parameters()).device
    x = x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        graph(x[:2])
        return batch / min(call_seconds(lambda: graph(x), repeats, warm=False, sync=sync))


def extraction_rate(spec, graph, dataset: Path, crops: int, config: Any) -> float:
    """Training's extraction of the first ``crops`` crops of ``dataset`` (decode included, no cache) in crops/s,
    with ``config`` (an ``EmbedConfig``: device, engine, precision, batch).

    The steady rate: an engine compiles before the clock, and the one-time fp32 comparison of the first batch
    (eager PyTorch on ``check_sample`` crops, ~2 s on a 2-core CPU) is taken out of the time, as both are fixed
    costs that a run of thousands of crops amortises; on a few hundred crops they would dominate the figure."""
    from headserve.train.dataset import read_yolo
    from headserve.train.embed import extract

    objects = read_yolo(dataset).objects[:crops]
    run = extract([o.image for o in objects], [o.box for o in objects], graph, spec.preprocess,
                  spec.embedding_dim, config)
    return float(run.ok.sum()) / (run.seconds - run.check_seconds)


def _throughput(bench: ExtractionBench, full: Path, root: Path) -> list[str]:
    if not bench.throughput_encoders:
        return []
    import torch

    from headserve.backbones import encoder_graph, load_encoder
    from headserve.train.embed import EmbedConfig

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    config = EmbedConfig(device="cpu", batch_size=64)
    dataset = _subset(full, -(-bench.throughput_crops // OBJECTS_PER_IMAGE), root / "throughput")
    lines = [f"### Extraction throughput, CPU ({cores} cores, batch 64, {bench.throughput_crops} crops of "
             f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEGs)", "",
             "| encoder | extraction crops/s | encoder alone, images/s | ratio (target >= 0.8) |", "|---|---|---|---|"]
    for name in bench.throughput_encoders:
        spec = stand_in(name, bench.weights_dir)
        graph = encoder_graph(load_encoder(spec))
        rate = extraction_rate(spec, graph, dataset, bench.throughput_crops, config)
        alone = _encoder_rate(graph, spec.preprocess.input_size, config.batch_size)
        lines.append(f"| {name} | {rate:.1f} | {alone:.1f} | {rate / alone:.2f} |")
    return lines + [""]


def _memory(bench: ExtractionBench, full: Path, root: Path) -> list[str]:
    spec = stand_in("dinov3:vits16", bench.weights_dir, layers=bench.memory_layers)
    rows = []
    for n in bench.memory_crops:
        subset = _subset(full, -(-n // OBJECTS_PER_IMAGE), root / f"n{n}")
        print(f"  memory run: {n} crops ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "headserve.app.bench.extraction", "--memory-child", str(subset),
                               spec.model_id], capture_output=True, text=True, check=False, timeout=MEMORY_RUN_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run on {n} crops failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    lines = [f"### Extraction memory (`prepare`, DINOv3 ViT-S/16 with {bench.memory_layers} blocks, 224 px, "
             "384-dim, fresh process each)", "",
             "| crops | peak RSS MiB | N x D embeddings MiB | peak less embeddings MiB | crops/s | "
             "crops' pixels a run holding them would need, MiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['crops']} | {r['peak_mib']:.0f} | {r['emb_mib']:.1f} | {r['peak_mib'] - r['emb_mib']:.0f} | "
                     f"{r['crops_per_s']:.0f} | {r['pixels_mib']:.0f} |")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        growth = ((b["peak_mib"] - b["emb_mib"]) - (a["peak_mib"] - a["emb_mib"])) / (a["peak_mib"] - a["emb_mib"])
        lines += ["", f"Peak beyond the embeddings grows {growth:+.1%} from {a['crops']} to {b['crops']} crops "
                      "(target < 10%). The last column is computed (N x 224 x 224 x 3 bytes), not measured: "
                      "what keeping every crop in memory, as training did before, would take."]
    return lines + [""]


def _memory_child(dataset: Path, weights: str) -> None:
    """One `prepare` run; prints its measurements as a JSON line."""
    from headserve.encoders import get_encoder
    from headserve.train.embed import EmbedConfig
    from headserve.train.pipeline import TrainRequest, prepare

    spec = get_encoder("dinov3:vits16").with_weights(weights)
    with tempfile.TemporaryDirectory() as tmp:
        req = TrainRequest(dataset=dataset, encoder=spec, out=Path(tmp) / "head", background=False,
                           embed=EmbedConfig(device="cpu"))
        t0 = time.perf_counter()
        prepared = prepare(req)
        seconds = time.perf_counter() - t0
        n, dim = prepared.emb.shape
    print(json.dumps({"crops": n, "peak_mib": peak_rss_mib(), "emb_mib": n * dim * 4 / 2**20,
                      "pixels_mib": n * 224 * 224 * 3 / 2**20, "crops_per_s": n / seconds}))


def _gpu(bench: ExtractionBench, full: Path, root: Path) -> list[str]:
    import torch

    if not bench.gpu_encoders:
        return []
    if not torch.cuda.is_available():
        return ["### Extraction on a GPU", "", "No CUDA device on this machine: section not run.", ""]
    from torch.utils.flop_counter import FlopCounterMode

    from headserve.backbones import encoder_graph, load_encoder
    from headserve.device import autocast, get_precision
    from headserve.train.embed import EmbedConfig

    name = torch.cuda.get_device_name(0)
    dataset = _subset(full, -(-bench.gpu_crops // OBJECTS_PER_IMAGE), root / "gpu")
    lines = [f"### Extraction on {name} ({bench.gpu_crops} crops, batch 256)", "",
             "| encoder | precision | extraction crops/s | encoder alone, images/s | GFLOP/image | "
             "encoder TFLOP/s achieved |", "|---|---|---|---|---|---|"]
    for enc in bench.gpu_encoders:
        spec = stand_in(enc, bench.weights_dir)
        graph = encoder_graph(load_encoder(spec))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            size = spec.preprocess.input_size
            graph(torch.zeros(1, size, size, 3, dtype=torch.uint8))
        gflop = counter.get_total_flops() / 1e9
        for precision in ("fp32", "bf16"):
            config = EmbedConfig(device="cuda", precision=precision, batch_size=256)
            rate = extraction_rate(spec, graph, dataset, bench.gpu_crops, config)  # moves the graph to the GPU
            with autocast(torch.device("cuda"), get_precision(precision)):
                alone = _encoder_rate(graph, spec.preprocess.input_size, 256)
            lines.append(f"| {enc} | {precision} | {rate:.0f} | {alone:.0f} | {gflop:.1f} | {alone * gflop / 1e3:.0f} |")
    lines += ["", "Compare the last column with the device's dense bf16 peak (H100/H200: about 990 TFLOP/s "
                  "on paper, about 790 in matrix-multiply benchmarks).", ""]
    return lines + _gpu_head_training(name)


def _gpu_head_training(name: str) -> list[str]:
    """The speed benchmark's MLP fit (100k x 1024, 20 classes, `full`, 10 epochs) on the GPU and on the CPU."""
    from headserve.app.bench.training import BenchConfig, structured_embeddings
    from headserve.train.profiles import profile_config
    from headserve.train.trainer import fit_head, head_config_for

    c = BenchConfig()
    x, y = structured_embeddings(c.speed_rows, c.speed_dim, c.speed_classes)
    va = slice(0, c.speed_rows // 10)
    tr = slice(c.speed_rows // 10, None)
    cfg = profile_config("full", epochs=c.speed_epochs)
    head_config = head_config_for(cfg, c.speed_dim, c.speed_classes, c.speed_hidden)
    rows = []
    for device in ("cuda", "cpu"):
        t0 = time.perf_counter()
        fit = fit_head(x[tr], y[tr], x[va], y[va], head_config, cfg, device=device)
        rows.append(f"| {device} | {time.perf_counter() - t0:.1f} | {fit.epochs_run} |")
    return [f"### Head training on {name} ({c.speed_rows:,} x {c.speed_dim}, MLP {c.speed_hidden}, `full`)", "",
            "| device | seconds | epochs |", "|---|---|---|", *rows, ""]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        _memory_child(Path(sys.argv[2]), sys.argv[3])
    else:
        print("usage: python -m headserve.app.bench.extraction --memory-child DATASET WEIGHTS_DIR", file=sys.stderr)
        sys.exit(2)
