"""The results file of classify/gate: whole lines, completed only when every crop is in, resumable."""

from __future__ import annotations

import json

import pytest

from headserve.app.results_file import ResultsFile
from headserve.client.errors import BadInputError


def test_resume_skips_present_crops_counting_a_crop_listed_twice_twice(tmp_path):
    out = tmp_path / "r.jsonl"
    rows = [{"image": "a"}, {"image": "b"}, {"image": "a"}, {"image": "c"}]
    first = ResultsFile(out)
    assert first.pending(rows) == [0, 1, 2, 3]
    first.write({"image": "a", "label": "x"})
    first.write({"image": "b", "label": "y"})
    assert "2 results are in" in first.abandon()
    assert not out.exists()
    again = ResultsFile(out, resume=True)
    assert again.pending(rows) == [2, 3]  # the second "a" is still to do
    again.write({"image": "a", "label": "x"})
    again.write({"image": "c", "label": "z"})
    again.finish()
    assert [json.loads(line)["image"] for line in out.read_text().splitlines()] == ["a", "b", "a", "c"]
    assert not out.with_name("r.jsonl.partial").exists()


def test_resume_of_a_finished_file_adds_only_new_crops(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"image": "a", "label": "x"}\n')
    results = ResultsFile(out, resume=True)
    assert results.pending([{"image": "a"}, {"image": "b"}]) == [1]
    results.write({"image": "b", "label": "y"})
    results.finish()
    assert out.read_text().splitlines() == ['{"image": "a", "label": "x"}', '{"image": "b", "label": "y"}']


def test_a_line_that_is_not_json_in_the_middle_is_refused_with_file_and_line(tmp_path):
    partial = tmp_path / "r.jsonl.partial"
    partial.write_text('{"image": "a"}\nnot json\n{"image": "b"}\n')
    with pytest.raises(BadInputError, match=rf"{partial}:2: not a JSON object"):
        ResultsFile(tmp_path / "r.jsonl", resume=True).pending([{"image": "a"}])


def test_resume_without_an_output_file_is_refused():
    with pytest.raises(BadInputError, match="--resume needs --output FILE"):
        ResultsFile(None, resume=True)
