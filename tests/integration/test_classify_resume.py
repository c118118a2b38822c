"""tritonserver killed during `headserve classify` over 2,000 crops: whole lines only, and --resume finishes the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.waiting import wait_until

from headserve.processes import session_members
from headserve.server import LocalTriton, ServerConfig

pytestmark = pytest.mark.integration
CROPS = 2000
HEAD = "t_clip_tiny"


@pytest.fixture(scope="module")
def crop_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(7)
    paths = []
    for i in range(CROPS):
        path = root / f"crop_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _classify(url: str, output: Path, crops: list[Path], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "headserve.app", "classify", "--head", HEAD, "--url", url, "--timeout", "5",
           "--output", str(output), *extra, *map(str, crops)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> list[dict]:
    data = path.read_text()
    assert data == "" or data.endswith("\n"), "the last line is cut"
    return [json.loads(line) for line in data.splitlines()]  # every line parses: whole JSON objects only


def _inferences(server: LocalTriton, model: str) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model)
        return sum(s.inference_count for s in stats.model_stats)
    finally:
        client.close()


def test_killed_server_leaves_whole_unique_lines_and_resume_classifies_only_the_missing_crops(
        local_repo, triton, crop_files, tmp_path):
    output = tmp_path / "results.jsonl"
    partial = tmp_path / "results.jsonl.partial"
    with LocalTriton(ServerConfig(repository=local_repo)) as server:
        run = _classify(server.grpc_url, output, crop_files)
        deadline = time.monotonic() + 120
        while (not partial.exists() or partial.stat().st_size < 20_000) and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[1][-2000:]
            time.sleep(0.02)
        pid = server.process.pid
        os.killpg(pid, signal.SIGKILL)  # tritonserver and its stubs, mid-run
        _, err = run.communicate(timeout=120)
        assert run.returncode == 2, err[-2000:]
        assert f"are in {partial}; run the same command again with --resume" in err
    assert not output.exists()  # the finished name appears only when every crop is in
    first = _lines(partial)
    images = [row["image"] for row in first]
    assert 0 < len(first) < CROPS
    assert len(set(images)) == len(images)  # none duplicated
    assert images == [str(p) for p in crop_files[:len(images)]]
    assert session_members(pid) == []

    # Resume against a live server on the same repository: the session's (a server of its own would cost
    # another start of every family's models, and the killed one is gone either way).
    before = _inferences(triton, HEAD)
    run = _classify(triton.grpc_url, output, crop_files, "--resume")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    missing = CROPS - len(first)
    # The server saw exactly the missing crops, no more (the ensemble counts requests only; its steps also
    # count warm-up). Ensemble statistics land just after the response: wait for them.
    wait_until(lambda: _inferences(triton, HEAD) - before >= missing, f"{missing} inferences of {HEAD} counted",
               timeout_s=10)
    assert _inferences(triton, HEAD) - before == missing
    assert not partial.exists()
    rows = _lines(output)
    assert len(rows) == CROPS
    assert sorted(r["image"] for r in rows) == sorted(str(p) for p in crop_files)
    assert rows[:len(first)] == first  # what the first run wrote is kept as it was
    assert all(0.0 <= r["confidence"] <= 1.0 and r["label"] for r in rows)


def test_resume_drops_a_line_cut_by_a_crash_and_redoes_that_crop(triton, crop_files, tmp_path):
    output = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    crops = crop_files[:10]
    run = _classify(triton.grpc_url, output, crops)
    assert run.wait(timeout=120) == 0
    whole = _lines(output)
    # A client killed mid-write leaves a line without its end: keep 4 whole lines and half of the fifth.
    text = output.read_text().splitlines(keepends=True)
    partial.write_text("".join(text[:4]) + text[4][: len(text[4]) // 2])
    output.unlink()
    run = _classify(triton.grpc_url, output, crops, "--resume")
    assert run.wait(timeout=120) == 0, run.communicate()[1]
    rows = _lines(output)
    assert [r["image"] for r in rows] == [str(p) for p in crops]
    assert rows[:4] == whole[:4]


def test_a_leftover_partial_file_without_resume_is_refused_and_kept(crop_files, tmp_path):
    output = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text('{"image": "x"}\n')
    run = _classify("127.0.0.1:1", output, crop_files[:2])
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2
    assert f"{partial} holds the results of an interrupted run; pass --resume" in err
    assert partial.read_text() == '{"image": "x"}\n'


def test_after_a_refused_crop_the_hint_says_to_fix_it_before_resume_and_resume_then_finishes(
        triton, crop_files, tmp_path):
    """A crop that does not decode stops the run past the first chunk; rerunning unchanged would stop there again."""
    import shutil

    crops = []
    for i, path in enumerate(crop_files[:70]):  # two chunks of the command's 64 crops: the first is written
        crops.append(tmp_path / "crops" / path.name)
        crops[-1].parent.mkdir(exist_ok=True)
        shutil.copy(path, crops[-1])
    bad = crops[66]
    bad.write_bytes(b"not an image")
    output = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    run = _classify(triton.grpc_url, output, crops)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2, err[-2000:]
    assert f"image {bad} does not decode" in err
    assert (f"64 results are in {partial}; rerunning as is would stop at the same crop: fix the input named above "
            "(replace the file, or leave that crop out), then run again with --resume") in err
    assert "run the same command again" not in err
    assert len(_lines(partial)) == 64
    shutil.copy(crop_files[66], bad)  # the fix: a decodable crop in its place
    run = _classify(triton.grpc_url, output, crops, "--resume")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-2000:]
    assert [r["image"] for r in _lines(output)] == [str(p) for p in crops] and not partial.exists()
