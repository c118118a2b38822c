"""The tritonserver flags headserve runs with: one list for the local server and the Kubernetes fleet.

The local server (``headserve serve``, the integration tests) and the Deployment in deploy/ must
agree on how models are controlled and when a server calls itself ready, or a rollout that works
here would behave differently in the cluster. Both render their arguments from ``TritonFlags``;
the deploy tests check that every rendered overlay's arguments equal ``FLEET.args()``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from headserve.errors import ConfigError

MODEL_CONTROL_MODES = ("none", "poll", "explicit")

# Triton's own default ports; the client's default URL, the Service and the probes use them too.
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002


@dataclass(frozen=True)
class TritonFlags:
    """Everything headserve sets on ``tritonserver``'s command line."""

    repository: str  # --model-repository: the directory of model directories
    model_control: str = "explicit"  # none | poll | explicit (explicit: `headserve export --server` loads new versions)
    poll_secs: int = 30  # --repository-poll-secs, only in poll mode
    host: str | None = None  # address all three endpoints bind; None keeps Triton's default, every interface
    grpc_port: int = GRPC_PORT
    http_port: int = HTTP_PORT
    metrics_port: int = METRICS_PORT
    gpu_metrics: bool = True  # --allow-gpu-metrics; off where no GPU is meant to be used
    exit_timeout_secs: int | None = None  # --exit-timeout-secs: how long SIGTERM waits for in-flight requests
    log_verbose: int = 0  # --log-verbose
    backend_directory: str | None = None  # --backend-directory; None keeps the container's own

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(f"model control mode {self.model_control!r} is not one of {MODEL_CONTROL_MODES}; "
                              "pick explicit for a fleet that export updates with the new versions").about(
                "model_control", self.model_control)

    def args(self) -> list[str]:
        """The arguments after the binary's name, in a fixed order."""
        args = [f"--model-repository={self.repository}"]
        if self.backend_directory is not None:
            args.append(f"--backend-directory={self.backend_directory}")
        for endpoint, port in (("grpc", self.grpc_port), ("http", self.http_port), ("metrics", self.metrics_port)):
            if self.host is not None:
                args.append(f"--{endpoint}-address={self.host}")
            args.append(f"--{endpoint}-port={port}")
        args.append(f"--model-control-mode={self.model_control}")
        if self.model_control == "poll":
            args.append(f"--repository-poll-secs={self.poll_secs}")
        if self.model_control == "explicit":
            # Load every model's newest version at start-up: a replica that starts during (or after)
            # a rollout serves what the repository holds, without waiting to be told.
            args.append("--load-model=*")
        args.append(f"--allow-gpu-metrics={str(self.gpu_metrics).lower()}")
        args.append("--strict-readiness=true")  # ready only when every loaded model is
        if self.exit_timeout_secs is not None:
            args.append(f"--exit-timeout-secs={self.exit_timeout_secs}")
        args.append(f"--log-verbose={self.log_verbose}")
        return args


# The Kubernetes fleet (deploy/kubernetes): the repository volume at /models, explicit model control
# so a new head reaches every replica when the exporter says so (deploy/README.md), and 50 s to drain
# inside the pod's 60 s termination grace period.
FLEET = TritonFlags(repository="/models", model_control="explicit", exit_timeout_secs=50)

# The same fleet under KServe (deploy/overlays/kserve): KServe mounts the storageUri volume at
# /mnt/models and routes gRPC to port 9000 and HTTP to 8080 in its serving runtimes.
KSERVE = replace(FLEET, repository="/mnt/models", grpc_port=9000, http_port=8080)
