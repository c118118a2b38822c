"""Helpers the tests share (importable as ``support.*``: pytest puts tests/, where conftest.py lives, on the path)."""
