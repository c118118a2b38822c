"""headserve.export: encoders and heads to ONNX, checked against PyTorch, written as a Triton repository."""
