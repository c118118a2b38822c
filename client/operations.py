"""What the client core asks a transport to do, and what a transport answers.

The core (``headserve.client.core``) does no I/O: its plans are generators that yield one operation at a
time and are resumed with the answer, or with the ``ClientError`` the operation raised. The sync and
asyncio transports each perform these four operations and nothing else, so every rule about heads,
versions, batches and decisions is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar, Union, cast

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Tensor:
    """One named input of a request."""

    name: str  # the model's input tensor name
    array: np.ndarray  # the rows this request carries, batch dimension first
    datatype: str  # Triton's name for ``array``'s dtype ("UINT8", "FP32")


@dataclass(frozen=True)
class Request:
    """One inference request: what a transport sends as one gRPC call."""

    model: str  # model (or ensemble) name
    inputs: tuple[Tensor, ...]  # the request's inputs
    outputs: tuple[str, ...]  # outputs to ask for
    version: str = ""  # the version the request is pinned to; "": whichever the server picks
    timeout_s: float | None = None  # deadline of this call; None: the connection options' deadline

    @property
    def what(self) -> str:
        """How an error names this request."""
        return f"inference on {self.model!r}"

    @property
    def rows(self) -> int:
        return len(self.inputs[0].array) if self.inputs else 0

    def triton_inputs(self) -> list[Any]:
        """The inputs as tritonclient ``InferInput`` objects (the sync and asyncio clients share the class)."""
        import tritonclient.grpc as grpcclient

        built = []
        for tensor in self.inputs:
            inp = grpcclient.InferInput(tensor.name, list(tensor.array.shape), tensor.datatype)
            inp.set_data_from_numpy(tensor.array)
            built.append(inp)
        return built

    def triton_outputs(self) -> list[Any]:
        import tritonclient.grpc as grpcclient

        return [grpcclient.InferRequestedOutput(name) for name in self.outputs]


@dataclass(frozen=True)
class Answer:
    """What one request came back with."""

    version: str  # the model version that answered
    outputs: dict[str, np.ndarray]  # output name -> array, for every output the request asked for
    seconds: float  # wall time of the request, from sending it to holding its outputs


@dataclass(frozen=True)
class ReadReady:
    """Is ``model`` ready on the server? Answered with a bool."""

    model: str  # model name

    @property
    def what(self) -> str:
        return f"readiness of {self.model!r}"


@dataclass(frozen=True)
class ReadVersions:
    """Which versions of ``model`` the server reports; answered with a sequence of version strings."""

    model: str  # model name

    @property
    def what(self) -> str:
        return f"metadata of {self.model!r}"


@dataclass(frozen=True)
class ReadConfig:
    """The ``ModelConfig`` protobuf of ``model``; answered with the config message itself."""

    model: str  # model name
    version: str | None = None  # the version to read ("": the newest); None: a model that is not pinned

    @property
    def what(self) -> str:
        pinned = "" if self.version is None else f" version {self.version or 'latest'}"
        return f"config of {self.model!r}{pinned}"


@dataclass(frozen=True)
class Send:
    """Send ``requests`` together, within the transport's concurrency limit; answered with an ``Answer`` each."""

    requests: tuple[Request, ...]  # one per batch of the call


Operation = Union[ReadReady, ReadVersions, ReadConfig, Send]
# A plan of the core: yields operations, is resumed with their answers, returns the call's result.
Plan = Generator[Operation, Any, T]


def drive(plan: Plan[T], perform: Callable[[Operation], Any]) -> T:
    """Perform each operation ``plan`` yields with ``perform`` and resume the plan with the answer, or with the
    error the operation raised, until it returns: the blocking transport's loop (the asyncio one awaits instead)."""
    answer: Any = None
    failure: Exception | None = None
    while True:
        try:
            op = plan.throw(failure) if failure is not None else plan.send(answer)
        except StopIteration as done:
            return cast(T, done.value)  # what the plan returned
        answer, failure = None, None
        try:
            answer = perform(op)
        except Exception as exc:  # a ClientError (or an answer's StaleAnswer): the plan decides what it means
            failure = exc
        except BaseException:  # KeyboardInterrupt, SystemExit: nothing to decide, end the plan
            plan.close()
            raise
