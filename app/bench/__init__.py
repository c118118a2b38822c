"""The benchmarks and their shared parts: ``python -m headserve.app.bench`` (``make bench``, ``make bench-smoke``).

One module per benchmark, each with ``run(out, smoke=False) -> list[str]`` (Markdown lines; ``smoke``: tiny
twins and short runs that show it runs and measure nothing real):

- ``training``: heads against the tuned scikit-learn baseline on two real-image sets; training speed.
- ``extraction``: training's embedding extraction at scale: throughput against the encoder alone, memory.
- ``ray``: `embed` on Ray Data against the built-in path: crops per CPU second, peak memory of driver and
  workers at 10k and 50k crops, the CPU of Ray's own processes, a simulated two-node cluster.
- ``ensemble``: the calibrated softmax fused in the head graph against its own ensemble step; tiny encoders served.
- ``serving``: real-size encoders served against PyTorch and ONNX Runtime in process.
- ``engines``: ONNX Runtime and OpenVINO against this machine's matrix-multiply ceilings.
- ``client``: client preprocessing, end-to-end crops/s, the mining estimate; ``client:metrics``, what decision
  metrics cost.

They share ``timing`` (timers, threaded loads, interleaved rounds, ``/proc`` readings) and ``repository`` (the
served repository each one builds); the soak (``headserve.app.soak``) uses both too. Numbers are reported,
never asserted: the suite's tests check behaviour, these check speed. Nothing in the library imports from here.
"""
