"""How the client talks to the server: deadlines, retries, TLS, compression, concurrency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headserve.client.errors import ClientConfigError, ClientError, ServerUnavailableError
from headserve.preprocess import DEFAULT_MAX_PIXELS

COMPRESSIONS = (None, "gzip", "deflate")
# Client-side load balancing over every address a target resolves to (a Kubernetes headless Service's pods,
# "dns:///headserve-triton-grpc.headserve.svc.cluster.local:8001"): gRPC's default, pick_first, sends every
# request of a channel to one of them. New addresses are seen when gRPC resolves the name again, which it
# does when a connection closes (a pod that leaves or restarts), not on a timer.
ROUND_ROBIN: tuple[tuple[str, str | int], ...] = (("grpc.lb_policy_name", "round_robin"),)


@dataclass(frozen=True)
class ConnectionOptions:
    """Connection settings shared by the sync and asyncio clients."""

    timeout_s: float = 30.0  # per-call deadline (each gRPC call); methods accept their own
    retries: int = 3  # extra attempts when the server is UNAVAILABLE
    backoff_s: float = 0.2  # wait before the first retry, doubled for each next one
    ssl: bool = False  # TLS; set implicitly by any certificate below
    root_certificates: str | None = None  # PEM file of the CA that signed the server's certificate
    private_key: str | None = None  # PEM file of the client key (mutual TLS)
    certificate_chain: str | None = None  # PEM file of the client certificate (mutual TLS)
    compression: str | None = None  # gRPC request compression: None, "gzip" or "deflate"
    max_in_flight: int = 4  # batches sent concurrently for one call
    max_pixels: int = DEFAULT_MAX_PIXELS  # decoded pixels allowed per image file or buffer (decompression bombs)
    # Extra gRPC channel arguments, e.g. (("grpc.lb_policy_name", "round_robin"),) to spread requests over every
    # address a DNS name resolves to; each overrides tritonclient's default of the same key (message size, keepalive)
    channel_options: tuple[tuple[str, str | int], ...] = ()

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ClientConfigError(f"timeout_s={self.timeout_s} must be positive").about("timeout_s", self.timeout_s)
        if self.retries < 0 or self.backoff_s < 0:
            raise ClientConfigError(f"retries={self.retries} and backoff_s={self.backoff_s} must not be negative")
        if self.compression not in COMPRESSIONS:
            raise ClientConfigError(f"compression {self.compression!r} is not one of {COMPRESSIONS}").about(
                "compression", self.compression)
        if self.max_pixels < 1:
            raise ClientConfigError(f"max_pixels={self.max_pixels} must be at least 1").about("max_pixels", self.max_pixels)
        if self.max_in_flight < 1:
            raise ClientConfigError(f"max_in_flight={self.max_in_flight} must be at least 1").about(
                "max_in_flight", self.max_in_flight)
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ClientConfigError("mutual TLS needs both private_key and certificate_chain; pass both or neither")
        object.__setattr__(self, "channel_options", tuple(tuple(o) for o in self.channel_options))  # lists too
        for option in self.channel_options:
            if len(option) != 2 or not isinstance(option[0], str) or not option[0].startswith("grpc."):
                raise ClientConfigError(f"channel option {option!r} is not a (\"grpc.<name>\", value) pair; see "
                                    "https://grpc.github.io/grpc/core/group__grpc__arg__keys.html for the keys")
            if not isinstance(option[1], (str, int)):
                raise ClientConfigError(f"channel option {option[0]!r} has value {option[1]!r}; gRPC takes a str or int")
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ClientConfigError(f"{name} file {path} does not exist; pass a PEM file").about(name, path)

    @property
    def use_ssl(self) -> bool:
        return self.ssl or any((self.root_certificates, self.private_key, self.certificate_chain))

    def client_kwargs(self) -> dict:
        """Keyword arguments for tritonclient's gRPC InferenceServerClient (sync and aio alike)."""
        kwargs: dict = {"ssl": self.use_ssl, "root_certificates": self.root_certificates,
                        "private_key": self.private_key, "certificate_chain": self.certificate_chain}
        if self.channel_options:
            kwargs["channel_args"] = self.channel_args()
        return kwargs

    def channel_args(self) -> list[tuple[str, str | int]]:
        """tritonclient's default channel arguments with ``channel_options`` laid over them.

        tritonclient uses ``channel_args`` instead of its defaults, not on top of them; passing only a
        load-balancing policy would silently drop its 2 GiB message limit to gRPC's 4 MiB.
        """
        import tritonclient.grpc as grpcclient

        keepalive = grpcclient.KeepAliveOptions()
        defaults: dict[str, str | int] = {
            "grpc.max_send_message_length": grpcclient.MAX_GRPC_MESSAGE_SIZE,
            "grpc.max_receive_message_length": grpcclient.MAX_GRPC_MESSAGE_SIZE,
            "grpc.keepalive_time_ms": keepalive.keepalive_time_ms,
            "grpc.keepalive_timeout_ms": keepalive.keepalive_timeout_ms,
            "grpc.keepalive_permit_without_calls": keepalive.keepalive_permit_without_calls,
            "grpc.http2.max_pings_without_data": keepalive.http2_max_pings_without_data,
        }
        return list({**defaults, **dict(self.channel_options)}.items())

    def backoff(self, attempt: int) -> float:
        return float(self.backoff_s * 2.0 ** attempt)

    def retry_delay(self, error: ClientError, attempt: int) -> float | None:
        """Seconds to wait before retrying a call that failed with ``error`` on try ``attempt`` (0-based);
        None: raise it. Only UNAVAILABLE is retried; any other answer would be the same again."""
        if isinstance(error, ServerUnavailableError) and attempt < self.retries:
            return self.backoff(attempt)
        return None
