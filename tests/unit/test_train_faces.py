"""The faces benchmark set: every LFW patch drawn once, as a YOLO dataset the trainer reads cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headserve.train.dataset import read_yolo
from headserve.train.faces import FACE_CLASSES, build_faces_dataset


def test_faces_dataset_draws_each_lfw_patch_once_with_boxes_the_reader_accepts(tmp_path: Path):
    root = build_faces_dataset(tmp_path / "faces")
    data = read_yolo(root)
    assert list(data.names) == list(FACE_CLASSES)
    assert not data.report.problems
    counts = np.bincount([o.class_id for o in data.objects], minlength=2)
    assert counts.tolist() == [100, 100]  # lfw_subset: 100 faces, 100 non-faces, none repeated
    assert len({o.image for o in data.objects}) >= 60  # enough source images for a grouped split
