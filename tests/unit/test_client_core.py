"""The client core: each call is one plan of transport operations (no I/O of its own, no plan inside a plan).

The core is I/O-free by design, so these tests answer its operations from configs rendered by export's own
code (``head_ensemble_desc`` + ``render``) instead of a server; what travels over gRPC is covered by
tests/integration/test_client_server.py and the hot-swap tests. ``drive`` is the sync transport's own loop.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from headserve.client.core import ClientCore
from headserve.client.errors import BadInputError, ClientError, HeadChangedError, ServerSideError
from headserve.client.operations import Answer, ReadConfig, ReadReady, ReadVersions, Send, drive
from headserve.client.options import ConnectionOptions
from headserve.contract import OOD_SCORE, PROBS, EncoderIdentity, ServedHead
from headserve.encoders import get_encoder
from headserve.export.model_config import Runtime, render
from headserve.export.repository import EnsembleWiring, head_ensemble_desc

V1 = ServedHead("pets", ("cat", "dog", "fox"), EncoderIdentity.from_spec(get_encoder("clip:tiny")), ood_threshold=2.0)
V2 = replace(V1, classes=("fox", "dog", "cat"))  # the same head retrained with another class order


class Repository:
    """Answers the core's operations as a server holding ``versions`` would; ``answered_by`` says which version
    computes the answers (another than the newest: a swap the client has not seen yet)."""

    def __init__(self, versions: dict[str, ServedHead]) -> None:
        self.versions = versions
        self.answered_by = max(versions, key=int)
        self.operations: list[type] = []

    def __call__(self, op: Any) -> Any:
        self.operations.append(type(op))
        if isinstance(op, ReadReady):
            return True
        if isinstance(op, ReadVersions):
            return list(self.versions)
        if isinstance(op, ReadConfig):
            version = op.version or max(self.versions, key=int)
            wiring = EnsembleWiring("encoder_clip_tiny", "pets_head", head_version=int(version), max_batch_size=4)
            return render(head_ensemble_desc(self.versions[version], wiring), Runtime.LOCAL)
        assert isinstance(op, Send), op
        served = self.versions[self.answered_by]
        answers = []
        for request in op.requests:
            rows = request.rows
            probs = np.tile(np.eye(len(served.classes), dtype=np.float32)[served.classes.index("dog")], (rows, 1))
            outputs = {PROBS: probs, OOD_SCORE: np.zeros((rows, 1), np.float32)}
            answers.append(Answer(self.answered_by, {name: outputs[name] for name in request.outputs}, 0.001))
        return answers


class Recorder:
    def __init__(self) -> None:
        self.errors: list[tuple[str, BaseException]] = []

    def observe_error(self, head: str, error: BaseException) -> None:
        self.errors.append((head, error))

    def observe_batch(self, info: Any, predictions: Any, seconds: float) -> None:
        pass


CROPS = [Image.new("RGB", (40, 30), (i * 40, 90, 200)) for i in range(5)]


def test_a_classify_reads_the_head_inside_its_own_plan_then_only_sends_once_the_head_is_cached():
    repository = Repository({"1": V1})
    core = ClientCore("server:8001", ConnectionOptions())
    predictions = drive(core.classify("pets", CROPS, 3, None, None), repository)
    assert [p.label for p in predictions] == ["dog"] * 5
    assert repository.operations == [ReadReady, ReadVersions, ReadConfig, Send]  # 5 crops, batches of 4: one Send
    repository.operations.clear()
    drive(core.classify("pets", CROPS[:2], 3, None, None), repository)
    assert repository.operations == [Send]


def test_an_answer_from_a_swapped_head_is_re_read_once_in_the_same_plan_then_refused_and_observed_once():
    repository = Repository({"1": V1})
    recorder = Recorder()
    core = ClientCore("server:8001", ConnectionOptions(), observer=recorder)  # type: ignore[arg-type]
    drive(core.read_head("pets"), repository)
    repository.versions["2"] = V2  # version 2 loads; the client still holds version 1
    repository.answered_by = "2"
    repository.operations.clear()
    predictions = drive(core.classify("pets", CROPS[:2], 3, None, None), repository)
    assert [p.label for p in predictions] == ["dog", "dog"] and core.heads["pets"].version == "2"
    assert repository.operations == [Send, ReadReady, ReadVersions, ReadConfig, Send]
    # Answers that keep coming from another version than the one just re-read: refused after one re-read, and
    # the observer told once.
    repository.answered_by = "1"
    repository.operations.clear()
    with pytest.raises(HeadChangedError, match=r"head 'pets' on server:8001 changed while answering"):
        drive(core.classify("pets", CROPS[:2], 3, None, None), repository)
    assert repository.operations == [Send, ReadReady, ReadVersions, ReadConfig, Send]
    assert [(head, type(error)) for head, error in recorder.errors] == [("pets", HeadChangedError)]
    assert all(isinstance(error, ClientError) for _, error in recorder.errors)


class BrokenServer(Repository):
    """A server whose model loaded but answers malformed tensors (the python stubs of a local Triton running with
    a numpy their backend does not support answer every request with empty ones). Faked: a real tritonserver
    produces it only with a broken environment that the test suite cannot install beside a working one."""

    def __init__(self, versions: dict[str, ServedHead], answer: Any) -> None:
        super().__init__(versions)
        self.answer = answer  # rows sent -> the probs array (or None: the output is missing)

    def __call__(self, op: Any) -> Any:
        if not isinstance(op, Send):
            return super().__call__(op)
        self.operations.append(Send)
        return [Answer(self.answered_by, {PROBS: self.answer(r.rows), OOD_SCORE: np.zeros((r.rows, 1), np.float32)},
                       0.001) for r in op.requests]


@pytest.mark.parametrize("answer, said", [
    (lambda rows: np.zeros((0,), np.float32), r"'probs' of shape \(0,\)"),
    (lambda rows: np.zeros((0, 3), np.float32), r"'probs' of shape \(0, 3\)"),
    (lambda rows: np.zeros((rows, 0), np.float32), r"'probs' of shape \(\d, 0\)"),
    (lambda rows: None, r"no 'probs'"),
], ids=["empty", "no rows", "no columns", "missing"])
def test_an_empty_or_malformed_answer_is_a_server_error_naming_the_model_and_version_not_the_crops(answer, said):
    repository = BrokenServer({"1": V1}, answer)
    recorder = Recorder()
    core = ClientCore("server:8001", ConnectionOptions(), observer=recorder)  # type: ignore[arg-type]
    with pytest.raises(ServerSideError, match=r"'pets' version 1 answered " + said + r" to a request of \d row") as err:
        drive(core.classify("pets", CROPS, 3, None, None), repository)
    assert not isinstance(err.value, BadInputError)
    assert "not the inputs sent" in str(err.value)
    assert repository.operations == [ReadReady, ReadVersions, ReadConfig, Send]  # no re-read: not a version swap
    assert [(head, type(error)) for head, error in recorder.errors] == [("pets", ServerSideError)]
