"""Region benchmark (``headserve.app.bench.regions``): every box of an image from one encoder pass, against one
224 px crop pass per box, end to end through the served ensembles.

One repository holds a crop head and a region head on the same encoder (a real architecture with random
weights, ``headserve.standins``: the compute of the trained model, not its accuracy), served by the local
tritonserver. For images carrying K = 1, 4, 16 and 64 boxes, one client sends each image's boxes:

- crop path: ``HeadClient.classify`` on the K crops (cut and resized on the client, one batched request);
- region path: ``HeadClient.classify_regions`` on the image and its K boxes (letterboxed once, one request).

Both paths are measured in interleaved rounds (a slow moment of the machine falls on both); each figure is
boxes per second, median over rounds [min, max]. The FLOP arithmetic of one region pass against one crop
pass is computed from the encoder's configuration (tokens, width, depth, MLP width), and the issue's targets
are checked as ratios in the output (the region path reaches at least 80% of the boxes/s that arithmetic
predicts from the crop path's own rate, at every K; at least 3x the crop path at K = 16), never asserted.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from headserve.app.bench.repository import WEIGHTS_DIR, BenchRepository, stand_in
from headserve.app.bench.timing import Measured, interleaved_rounds, spread

TARGET_OF_PREDICTED = 0.8  # region boxes/s at least this share of what the FLOP ratio predicts, at every K
TARGET_AT_16 = 3.0  # region boxes/s at least this multiple of the crop path's at K = 16
IMAGE_SIZE = (640, 480)  # a detector frame (width, height)


@dataclass(frozen=True)
class RegionBenchConfig:
    """What the benchmark measures and how long it spends on each configuration."""

    encoder: str = "dinov3:vits16"  # a real architecture with random weights (the stand-in)
    boxes: tuple[int, ...] = (1, 4, 16, 64)  # boxes per image
    min_boxes: int = 64  # each configuration sends images until at least this many boxes went per round
    rounds: int = 3  # interleaved rounds: the median and range are over these
    weights_dir: Path = WEIGHTS_DIR  # where the random-weight checkpoints are kept


# `--smoke`: the tiny twin, few boxes, one round; shows the benchmark runs, measures nothing real.
SMOKE = RegionBenchConfig(encoder="dinov3:tiny", min_boxes=4, rounds=1)


def run(out: Path, smoke: bool = False, config: RegionBenchConfig | None = None) -> list[str]:
    config = config or (SMOKE if smoke else RegionBenchConfig())
    print(f"  {config.encoder}: building, exporting and serving a crop head and a region head ...", flush=True)
    load_before = os.getloadavg()[0]
    results, flops = _measure(config)
    lines = ["## Region path vs crop path (`headserve.app.bench.regions`)", "",
             f"{config.encoder} (random weights), one client, one image per call, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} "
             f"images; the client and the server share this machine's {os.cpu_count()} cores (1-minute load average "
             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after). Boxes/s end to end (client preprocessing, "
             f"gRPC, the served ensemble, decisions), median over {config.rounds} interleaved rounds [min, max]; "
             "ratios are the median [min, max] of each round's ratio (the two paths of a K run back to back).", ""]
    lines += [flops.describe(), ""] + _table(results, config, flops) + [""]
    return lines


@dataclass(frozen=True)
class PassCost:
    """The arithmetic of one ViT pass over ``tokens`` tokens: multiply-adds of the dense layers and attention."""

    layers: int  # transformer blocks
    width: int  # hidden size d
    mlp: int  # MLP hidden size
    crop_tokens: int  # tokens of a crop pass: the patches of the crop side, plus CLS and registers
    region_tokens: int  # tokens of a region pass at the region resolution
    resolution: int  # the region frame's side
    crop_size: int  # the crop side

    def macs(self, tokens: int) -> float:
        """Per pass: q, k, v and output projections (4 n d^2), the MLP (2 n d m), q k^T and attention x v (2 n^2 d)."""
        d = self.width
        return self.layers * (4 * tokens * d * d + 2 * tokens * d * self.mlp + 2 * tokens * tokens * d)

    @property
    def ratio(self) -> float:
        """How many crop passes one region pass costs."""
        return self.macs(self.region_tokens) / self.macs(self.crop_tokens)

    def describe(self) -> str:
        return (f"FLOP arithmetic: a crop pass at {self.crop_size} px is {self.crop_tokens} tokens, "
                f"{2 * self.macs(self.crop_tokens) / 1e9:.2f} GFLOP; a region pass at {self.resolution} px is "
                f"{self.region_tokens} tokens ({self.region_tokens / self.crop_tokens:.2f}x), "
                f"{2 * self.macs(self.region_tokens) / 1e9:.2f} GFLOP: one region pass costs {self.ratio:.2f} crop "
                f"passes ({self.layers} blocks of width {self.width}, MLP {self.mlp}; dense layers 4nd^2 + 2ndm, "
                "attention 2n^2d multiply-adds per block). So the region path should give K / "
                f"{self.ratio:.2f} times the crop path's boxes/s at K boxes per image.")


def pass_cost(loaded: Any, region: Any) -> PassCost:
    """The pass arithmetic of a loaded DINO encoder (transformers config) at its crop side and ``region``."""
    config = loaded.full_model.config
    prefix = 1 + int(getattr(config, "num_register_tokens", 0))
    crop = loaded.spec.preprocess.input_size
    patch = region.patch_size
    return PassCost(layers=int(config.num_hidden_layers), width=int(config.hidden_size),
                    mlp=int(config.intermediate_size), crop_tokens=(crop // patch) ** 2 + prefix,
                    region_tokens=region.grid ** 2 + prefix, resolution=region.resolution, crop_size=crop)


# ---------------------------------------------------------------------------------------------
# Repository, images, rounds.


def _measure(config: RegionBenchConfig) -> tuple[dict[str, Measured], PassCost]:
    from headserve.backbones import load_encoder, region_spec_for
    from headserve.client import HeadClient
    from headserve.export.example import ExampleHead
    from headserve.export.pipeline import export_head
    from headserve.export.region_ensemble import write_example_region_head

    spec = stand_in(config.encoder, config.weights_dir)
    loaded = load_encoder(spec)
    region = region_spec_for(loaded)
    flops = pass_cost(loaded, region)
    images = {k: _images(k, max(1, -(-config.min_boxes // k)), seed=k) for k in config.boxes}
    with tempfile.TemporaryDirectory(prefix="headserve-regions-") as tmp:
        built = BenchRepository(Path(tmp))
        built.example_head(spec, "crop_head")
        export_head(write_example_region_head(spec, ExampleHead("region_head"), built.root / "region_head"),
                    built.repo, "local")
        with built.serve(startup_timeout_s=600) as server, HeadClient(server.grpc_url, timeout_s=600) as client:
            sides: dict[str, Callable[[], float]] = {}
            for k, batch in images.items():
                sides[f"crop K={k}"] = lambda b=batch: _rate(b, lambda im, bx, crops: client.classify("crop_head",
                                                                                                      crops()))
                sides[f"region K={k}"] = lambda b=batch: _rate(b, lambda im, bx, crops: client.classify_regions(
                    "region_head", im, bx))
            for side in sides.values():  # warm: the first request sizes the runtimes' buffers
                side()
            return interleaved_rounds(config.rounds, sides), flops


def _images(k: int, count: int, seed: int) -> list[tuple[Any, np.ndarray]]:
    """``count`` random RGB frames, each with ``k`` boxes of 24 to 240 px sides inside it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    out = []
    for _ in range(count):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        sides = rng.uniform(24, 240, size=(k, 2))
        corner = rng.uniform(0, 1, size=(k, 2)) * (np.array([width, height]) - sides)
        out.append((image, np.concatenate([corner, corner + sides], axis=1)))
    return out


def _rate(images: list[tuple[Any, np.ndarray]], call: Callable[[Any, np.ndarray, Callable[[], list]], Any]) -> float:
    """Boxes per second of ``call`` over every image, one after another; crops are cut inside the clock."""
    from headserve.preprocess import crop_box

    started = time.perf_counter()
    boxes = 0
    for image, bx in images:
        answers = call(image, bx, lambda im=image, b=bx: [crop_box(im, box) for box in b])
        assert len(answers) == len(bx)  # one decision per box, or the rate would count boxes never answered
        boxes += len(bx)
    return boxes / (time.perf_counter() - started)


def _table(results: dict[str, Measured], config: RegionBenchConfig, flops: PassCost) -> list[str]:
    lines = ["| boxes per image K | crop path, boxes/s | region path, boxes/s | region / crop | predicted "
             "region / crop (K / FLOP ratio) | measured / predicted | targets |", "|---|---|---|---|---|---|---|"]
    for k in config.boxes:
        crop, region = results[f"crop K={k}"], results[f"region K={k}"]
        ratios = [r / c for r, c in zip(region.rates, crop.rates)]  # per round: both paths measured back to back
        speedup = statistics.median(ratios)
        predicted = k / flops.ratio
        share = speedup / predicted
        checks = [f">= {TARGET_OF_PREDICTED:.0%} of predicted: {'ok' if share >= TARGET_OF_PREDICTED else '**missed**'}"]
        if k == 16:
            checks.append(f">= {TARGET_AT_16:g}x crop: {'ok' if speedup >= TARGET_AT_16 else '**missed**'}")
        lines.append(f"| {k} | {crop.cell()} | {region.cell()} | {spread(ratios, digits=2)} | {predicted:.2f} | "
                     f"{share:.0%} | "
                     f"{'; '.join(checks)} |")
    return lines
