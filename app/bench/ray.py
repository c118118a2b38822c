"""`headserve embed` on Ray Data against the built-in path (``headserve.app.bench.ray``): crops/s, memory, CPU, nodes.

Each run is one `headserve embed` (``train.store.embed_dataset``) in a fresh process, so a run's memory and CPU
are its own: the process and every process it starts (for Ray: GCS, raylet, agents, the decode tasks' and
encoder actors' workers) are sampled from ``/proc`` every 0.25 s (``timing.TreeSampler``). Memory is the peak
of the summed PSS: Ray's object store is shared memory that every process mapping it would count again in RSS.

1. Throughput on a real-size encoder (random weights, real compute) through the CPU engine, built-in and Ray
   interleaved in rounds, same engine, same machine: crops/s over the embedding (the local Ray's start is timed
   apart; the encoder actor's start and compile are inside, as the built-in path's compile is), and the CPU
   seconds of every process by what it is, so Ray's own share stands beside the ratio.
2. Memory at 10k and 50k crops on DINOv3 ViT-S/16's stem (patch embedding, no blocks: real 224 px input and
   384-dim output, little compute, so 50k crops fit the benchmark's time; decoding dominates): peak of driver
   and workers together, beyond the embeddings themselves.
3. A simulated two-node cluster (``ray.cluster_utils.Cluster``, two raylets on this machine): where the decode
   tasks and the encoder actors ran and the CPU each node spent, read per raylet's process tree.
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
from typing import Any, Callable, Mapping

from headserve.app.bench.extraction import OBJECTS_PER_IMAGE, _subset, write_photo_dataset
from headserve.app.bench.repository import WEIGHTS_DIR, stand_in
from headserve.app.bench.timing import TreeSampler, spread

RUN_TIMEOUT_S = 3600.0  # one embed run (50k crops decode for minutes on 2 cores)


@dataclass(frozen=True)
class RayBench:
    """Sizes of the Ray benchmark."""

    throughput_encoder: str = "dinov3:vits16"  # real architecture, random weights
    throughput_layers: int | None = None  # None: every block (the real compute)
    engine: str = "openvino"  # the CPU engine both paths run
    throughput_crops: int = 512
    rounds: int = 2  # built-in and Ray interleaved, this many times each
    memory_crops: tuple[int, ...] = (10_000, 50_000)
    memory_layers: int = 0  # the stem only: memory per crop is real, compute is not
    memory_sides: tuple[str, ...] = ("ray",)  # the built-in path's memory at these sizes: the extraction benchmark
    shard_rows: int = 64  # crops per shard, both paths: Ray's unit of work, so 512 crops make 8 tasks, not one
    two_node_crops: int = 512
    node_cpus: int = 2  # logical CPUs of each simulated node
    weights_dir: Path = WEIGHTS_DIR


SMOKE = RayBench(throughput_encoder="dinov3:tiny", engine="torch", throughput_crops=64, rounds=1,
                 memory_crops=(160, 480), memory_sides=("built-in", "ray"), two_node_crops=96, shard_rows=32)


def run(out: Path, smoke: bool = False, bench: RayBench | None = None) -> list[str]:
    bench = bench or (SMOKE if smoke else RayBench())
    lines = ["## Embedding on Ray Data against the built-in path (`headserve.app.bench.ray`)", ""]
    with tempfile.TemporaryDirectory(prefix="headserve-ray-bench-") as tmp:
        root = Path(tmp)
        largest = max((*bench.memory_crops, bench.throughput_crops, bench.two_node_crops))
        print(f"  writing {largest // OBJECTS_PER_IMAGE} photographs ...", flush=True)
        full = write_photo_dataset(root / "full", -(-largest // OBJECTS_PER_IMAGE))
        for section in (_throughput, _two_nodes, _memory):
            try:
                part = section(bench, full, root)
            except RuntimeError as exc:  # one failed run leaves the other sections' numbers standing
                part = [f"### {section.__name__.strip('_')}: a run failed", "", "```", str(exc)[-2500:], "```", ""]
            print("\n".join(part), flush=True)  # each section as it ends: a long run shows its figures early
            lines += part
    return lines


# ---------------------------------------------------------------------------------------------
# One run: a child process embedding a dataset, its process tree sampled.


@dataclass
class EmbedRun:
    """What one `embed` child did and what its processes used."""

    crops: int  # rows embedded
    seconds: float  # the embedding, as `embed` times it (after the encoder's fingerprint, after Ray started)
    ray_start_s: float  # starting (or joining) Ray, before the embedding; 0 for the built-in path
    wall_s: float  # the whole child, interpreter start to exit
    peak_pss_mib: float  # driver and every process it started (or, on a cluster, each node's), summed
    peak_rss_mib: float  # the same in RSS (counts shared memory once per process that maps it)
    cpu: dict[str, float]  # CPU seconds by what the process is (driver, raylet, ray::ShardEncoder, ...)
    cpu_by_label: dict[str, float]  # CPU seconds by root (driver, or a node on the simulated cluster)
    workers: dict[str, set[str]]  # label -> distinct Ray worker titles seen there

    @property
    def rate(self) -> float:
        return self.crops / self.seconds


def embed_run(dataset: Path, spec_name: str, weights: str | None, engine: str, ray: str | None, out: Path,
              shard_rows: int, extra_roots: Callable[[], Mapping[str, int]] = dict) -> EmbedRun:
    """`embed` on ``dataset`` in a child (``ray``: None built-in, "" a local Ray, else the cluster's address)."""
    job = {"dataset": str(dataset), "encoder": spec_name, "weights": weights, "engine": engine, "ray": ray,
           "out": str(out), "shard_rows": shard_rows}
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "headserve.app.bench.ray", "--child", json.dumps(job)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeSampler(lambda: {**extra_roots(), "driver": child.pid}) as sampler:
        stdout, stderr = child.communicate(timeout=RUN_TIMEOUT_S)
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        log = out.with_name(out.name + ".stderr.txt")
        log.write_text(stderr)
        errors = [line for line in stderr.splitlines() if "Error" in line or "error:" in line]
        raise RuntimeError(f"embed run on {dataset} (ray={ray!r}) failed, exit {child.returncode}:\n"
                           + "\n".join(errors[-10:]) + f"\n{stderr[-1500:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    workers: dict[str, set[str]] = {}
    for label, name, _ in sampler.cpu.values():
        if name.startswith("ray::"):
            workers.setdefault(label, set()).add(name)
    return EmbedRun(result["rows"], result["seconds"], result["ray_start_s"], wall, sampler.peak_pss_mib,
                    sampler.peak_rss_mib, sampler.cpu_by(lambda _, name: _group(name)),
                    sampler.cpu_by(lambda label, _: label), workers)


def _group(name: str) -> str:
    """A process's part: the work (decode tasks, encoder actor), the driver, or one of Ray's own processes."""
    if "ShardEncoder" in name:
        return "encoder actor"
    if "decode_shards" in name:
        return "decode tasks"
    if name.startswith("ray::"):
        return f"Ray: {name[5:]}"  # Data's stats and autoscaling actors, the node's agents, idle workers
    if name == "bench/ray.py" or name == "ray.py" or name.startswith("python"):
        return "driver"
    return name  # raylet, gcs_server, agent.py, log_monitor.py, ...


def _child(job: dict[str, Any]) -> None:
    """One `embed` run; prints its measurements as a JSON line."""
    from headserve.encoders import get_encoder
    from headserve.train.embed import EmbedConfig
    from headserve.train.store import EmbedRequest, embed_dataset

    spec = get_encoder(job["encoder"])
    if job["weights"]:
        spec = spec.with_weights(job["weights"])
    start = 0.0
    if job["ray"] is not None:
        from headserve.ray_cluster import connect

        t0 = time.perf_counter()
        connect(job["ray"])
        start = time.perf_counter() - t0
    req = EmbedRequest(dataset=Path(job["dataset"]), encoder=spec, out=Path(job["out"]),
                       embed=EmbedConfig(device="cpu", engine=job["engine"]), ray=job["ray"], background=False,
                       bg_per_image=0, shard_rows=job["shard_rows"])
    outcome = embed_dataset(req)
    print(json.dumps({"rows": outcome.rows, "seconds": outcome.seconds, "ray_start_s": start}))


def _weights(name: str, bench: RayBench, layers: int | None) -> tuple[str, str | None]:
    spec = stand_in(name, bench.weights_dir, layers=layers)
    return name, None if spec.is_tiny else spec.model_id


# ---------------------------------------------------------------------------------------------


def _throughput(bench: RayBench, full: Path, root: Path) -> list[str]:
    name, weights = _weights(bench.throughput_encoder, bench, bench.throughput_layers)
    dataset = _subset(full, -(-bench.throughput_crops // OBJECTS_PER_IMAGE), root / "throughput")
    runs: dict[str, list[EmbedRun]] = {"built-in": [], "ray": []}
    for r in range(bench.rounds):
        print(f"  throughput round {r + 1}/{bench.rounds}", flush=True)
        for side, ray in (("built-in", None), ("ray", "")):
            runs[side].append(embed_run(dataset, name, weights, bench.engine, ray, root / f"t-{side}-{r}",
                                        bench.shard_rows))
    cores = os.cpu_count() or 1
    base = [x.rate for x in runs["built-in"]]
    ray_rates = [x.rate for x in runs["ray"]]
    ratios = [b / a for a, b in zip(base, ray_rates)]
    lines = [f"### Throughput: {name} (random weights{', all blocks' if bench.throughput_layers is None else ''}), "
             f"`--engine {bench.engine}`, {runs['ray'][0].crops} crops of 640x480 JPEGs in shards of "
             f"{bench.shard_rows}, {cores} cores, "
             f"{bench.rounds} interleaved round(s), median [min, max]", "",
             "| path | crops/s | Ray start s | whole process s | peak PSS MiB (driver + workers) | CPU s |",
             "|---|---|---|---|---|---|"]
    for side, xs in runs.items():
        lines.append(f"| {side} | {spread([x.rate for x in xs])} | {spread([x.ray_start_s for x in xs])} | "
                     f"{spread([x.wall_s for x in xs], digits=0)} | {spread([x.peak_pss_mib for x in xs], digits=0)} | "
                     f"{spread([sum(x.cpu.values()) for x in xs], digits=0)} |")
    per_cpu = [(b.crops / sum(b.cpu.values())) / (a.crops / sum(a.cpu.values()))
               for a, b in zip(runs["built-in"], runs["ray"])]
    lines += ["", f"Ray / built-in in crops/s: {spread(ratios, digits=2)}; in crops per CPU second (every process of "
                  f"each run, what a loaded machine moves least): {spread(per_cpu, digits=2)} (target >= 0.75).", ""]
    last = runs["ray"][-1]
    total = sum(last.cpu.values())
    lines += ["CPU seconds of the last Ray run's processes, by part:", "", "| part | CPU s | share |", "|---|---|---|"]
    for part, seconds in sorted(last.cpu.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            lines.append(f"| {part} | {seconds:.1f} | {seconds / total:.0%} |")
    work = sum(v for k, v in last.cpu.items() if k in ("encoder actor", "decode tasks"))
    lines += ["", f"The work (decode tasks and encoder actor) took {work:.0f} of {total:.0f} CPU s; the rest is "
                  f"the driver and Ray's own processes, {(total - work) / last.seconds:.2f} cores over the run.", ""]
    return lines


def _memory(bench: RayBench, full: Path, root: Path) -> list[str]:
    name, weights = _weights("dinov3:vits16", bench, bench.memory_layers)
    rows = []
    for n in bench.memory_crops:
        dataset = _subset(full, -(-n // OBJECTS_PER_IMAGE), root / f"m{n}")
        for side, ray in (("built-in", None), ("ray", "")):
            if side not in bench.memory_sides:
                continue
            print(f"  memory run: {n} crops, {side} ...", flush=True)
            rows.append((n, side, embed_run(dataset, name, weights, "torch", ray, root / f"m-{side}-{n}",
                                            max(bench.shard_rows, 512))))
    lines = [f"### Memory: DINOv3 ViT-S/16 stem ({bench.memory_layers} blocks: 224 px in, 384-dim out), "
             "`--engine torch`, fresh processes", "",
             "| crops | path | peak PSS MiB | peak RSS MiB | embeddings MiB | PSS beyond embeddings MiB | crops/s |",
             "|---|---|---|---|---|---|---|"]
    beyond: dict[str, list[float]] = {}
    for n, side, x in rows:
        emb = x.crops * 384 * 4 / 2**20
        beyond.setdefault(side, []).append(x.peak_pss_mib - emb)
        lines.append(f"| {x.crops} | {side} | {x.peak_pss_mib:.0f} | {x.peak_rss_mib:.0f} | {emb:.1f} | "
                     f"{x.peak_pss_mib - emb:.0f} | {x.rate:.0f} |")
    lines.append("")
    for side, values in beyond.items():
        if len(values) >= 2:
            lines.append(f"- {side}: beyond the embeddings, peak grows {(values[-1] - values[0]) / values[0]:+.1%} from "
                         f"{bench.memory_crops[0]} to {bench.memory_crops[-1]} crops (target < 10%).")
    return lines + [""]


def _two_nodes(bench: RayBench, full: Path, root: Path) -> list[str]:
    from ray.cluster_utils import Cluster

    # The throughput encoder at its real compute: with the stem only, decoding bounds the run and the first
    # actor free takes every shard, which says nothing about how encoding work spreads over nodes.
    name, weights = _weights(bench.throughput_encoder, bench, bench.throughput_layers)
    dataset = _subset(full, -(-bench.two_node_crops // OBJECTS_PER_IMAGE), root / "two")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": bench.node_cpus, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=bench.node_cpus)
        assert cluster.head_node is not None  # initialize_head=True
        raylets = {"GCS (head)": cluster.head_node.all_processes["gcs_server"][0].process.pid}
        node_labels: dict[str, str] = {}
        for i, node in enumerate(cluster.list_all_nodes()):
            label = f"node {i + 1}{' (head)' if node.head else ''}"
            raylets[label] = node.all_processes["raylet"][0].process.pid
            node_labels[str(node.node_id)[:12]] = label
        print("  two-node run ...", flush=True)
        x = embed_run(dataset, name, weights, "torch", cluster.address, root / "two-store", bench.shard_rows,
                      lambda: raylets)
    finally:
        cluster.shutdown()
    lines = [f"### Two simulated nodes ({bench.node_cpus} CPUs each, `ray.cluster_utils.Cluster` on this machine), "
             f"{x.crops} crops, {name} (every block), `--engine torch`", "",
             "| process tree | CPU s | Ray workers seen there |", "|---|---|---|"]
    for label, seconds in sorted(x.cpu_by_label.items()):
        titles = ", ".join(sorted(t.replace("ray::", "") for t in x.workers.get(label, set()))) or "-"
        lines.append(f"| {label} | {seconds:.1f} | {titles} |")
    ray_facts = json.loads((root / "two-store" / "manifest.json").read_text())["ray"]
    lines += ["", f"{x.crops} crops in {x.seconds:.1f} s ({x.rate:.0f} crops/s). Each node's row counts its raylet "
                  "and the workers it started; `driver` is the `embed` process (index, plan, manifest).", "",
              f"Rows each node's encoder actor embedded (the store's manifest; {ray_facts['actors']} actors, started "
              "before work was handed out):", "", "| node | crops embedded |", "|---|---|"]
    lines += [f"| {node_labels.get(node, node)} | {n} |" for node, n in sorted(ray_facts["rows_by_node"].items())]
    lines.append("")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        print("usage: python -m headserve.app.bench.ray --child JOB_JSON", file=sys.stderr)
        sys.exit(2)
