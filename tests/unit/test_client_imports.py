"""The client installs without the training stack: importing it must not pull torch in."""

import subprocess
import sys


def test_importing_the_client_loads_no_torch_transformers_or_open_clip():
    code = ("import sys, headserve.client, headserve.app.classify, headserve.client.aio; "
            "print(','.join(m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_classify_command_parses_without_loading_torch():
    code = ("import sys; from headserve.app.cli import build_parser; "
            "build_parser().parse_args(['classify', '--head', 'h', 'crop.png']); "
            "build_parser().parse_args(['gate', '--head', 'h', '--target', 't', 'crop.png']); "
            "print(','.join(m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
