"""`headserve classify --ray` as a process, against the real tritonserver and a two-node Ray cluster."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HEAD = "t_clip_tiny"
KEPT = 40  # answers an interrupted run left in FILE.partial


def _classify(url: str, dataset: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "headserve.app", "classify", "--head", HEAD, "--url", url, "--timeout", "20",
           "--yolo", str(dataset), "--output", str(output), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)


def _rows(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n"), "the last line is cut"
    return [json.loads(line) for line in text.splitlines()]


def test_classify_on_two_ray_nodes_resumes_and_answers_as_the_server_does(
        triton, ray_cluster, digits_dataset, tmp_path):
    served = tmp_path / "served.jsonl"
    run = _classify(triton.grpc_url, digits_dataset, served)
    assert run.returncode == 0, run.stderr[-2000:]
    expected = _rows(served)
    assert len(expected) - KEPT > 6 * 16  # enough batches of 16 for the three actors on two nodes

    # An interrupted --ray run: its first answers are in FILE.partial; --resume on two nodes adds the rest.
    output = tmp_path / "ray.jsonl"
    (tmp_path / "ray.jsonl.partial").write_text("".join(json.dumps(r) + "\n" for r in expected[:KEPT]))
    node = ray_cluster.add_node(num_cpus=1)
    try:
        run = _classify(triton.grpc_url, digits_dataset, output, "--resume", "--ray", ray_cluster.address,
                        "--ray-actors", "3", "--ray-batch", "16")
    finally:
        ray_cluster.remove_node(node)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = _rows(output)
    assert rows[:KEPT] == expected[:KEPT]  # kept as they were, not classified again

    summary = re.search(r"(\d+) crops classified on (\d+) Ray node\(s\) \((.*)\)", run.stderr)
    assert summary, run.stderr[-2000:]
    assert int(summary.group(1)) == len(expected) - KEPT  # only the missing crops went to the server
    assert summary.group(2) == "2"
    per_node = [int(part.rsplit(": ", 1)[1]) for part in summary.group(3).split(", ")]
    assert all(n > 0 for n in per_node) and sum(per_node) == len(expected) - KEPT

    def key(row: dict) -> str:
        return f"{row['source']}|{row['box_xyxy']}"

    by_crop = {key(r): r for r in rows}
    assert len(by_crop) == len(rows) == len(expected)  # each crop once, none missing
    for want in expected:
        got = by_crop[key(want)]
        assert got["head"] == want["head"] == HEAD and got["version"] == want["version"]
        assert (got["label"], got["decision"]) == (want["label"], want["decision"]), key(want)
        assert [c for c, _ in got["top_k"]] == [c for c, _ in want["top_k"]]
        # the same served ensemble; a request batched with another actor's may differ in the last float bits
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def test_classify_refuses_a_crop_file_taken_as_the_ray_address(tmp_path):
    crop = tmp_path / "crop.png"
    crop.write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "headserve.app", "classify", "--head", HEAD, "--ray", str(crop)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"Ray address '{crop}' is not auto, local, HOST:PORT" in run.stderr


def test_a_crop_an_actor_refuses_is_one_line_naming_it_and_no_traceback(triton, ray_cluster, tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (24, 24), (90, 140, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    output = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "headserve.app", "classify", "--head", HEAD, "--url", triton.grpc_url,
           "--output", str(output), str(good), str(bad), "--ray", ray_cluster.address, "--ray-batch", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("headserve classify: error:")]
    assert errors == [f"headserve classify: error: image {bad} does not decode (UnidentifiedImageError: cannot "
                      f"identify image file '{bad}'); pass a JPEG, PNG or other format Pillow reads"]
    assert "Traceback" not in run.stderr and "UDF" not in run.stderr
    assert not output.exists()  # never the finished name for a run that stopped
