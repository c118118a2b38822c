"""headserve.train: YOLO data -> cached embeddings -> calibrated heads -> artifacts and reports."""
