"""The client installs without the training stack: importing it must not pull torch in."""

import subprocess
import sys


def test_importing_the_client_loads_no_torch_transformers_or_open_clip():
    code = ("import sys, headserve.client, headserve.client.cli, headserve.client.aio; "
            "print(','.join(m for m in ('torch', 'transformers', 'open_clip', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
