"""headserve.client: ask a Triton server for calibrated decisions over gRPC, without torch.

Only tritonclient[grpc], numpy and pillow are imported here and below; the preprocessing comes from
``headserve.preprocess``, the same code training used.
"""

from headserve.client.aio import AsyncHeadClient
from headserve.client.crops import CropRef, crops_from_yolo, polygon_to_xyxy, yolo_box_to_xyxy
from headserve.client.decision import Prediction, Reason, Thresholds, decide
from headserve.client.discovery import HeadInfo
from headserve.client.errors import (
    BadInputError,
    ClientError,
    DeadlineExceededError,
    HeadChangedError,
    HeadNotFoundError,
    MessageTooLargeError,
    ModelNotReadyError,
    ServerSideError,
    ServerUnavailableError,
)
from headserve.client.estimate import ComputeEstimate
from headserve.client.gating import GateConfig, GateReason, GateResult, gate
from headserve.client.observer import Observer, Observers
from headserve.client.options import ConnectionOptions
from headserve.client.sync import HeadClient

__all__ = [
    "AsyncHeadClient", "HeadClient", "ConnectionOptions", "HeadInfo", "Observer", "Observers",
    "Prediction", "Reason", "Thresholds", "decide",
    "GateConfig", "GateReason", "GateResult", "ComputeEstimate", "gate",
    "CropRef", "crops_from_yolo", "polygon_to_xyxy", "yolo_box_to_xyxy",
    "ClientError", "ServerUnavailableError", "DeadlineExceededError", "ModelNotReadyError", "HeadNotFoundError",
    "BadInputError", "MessageTooLargeError", "ServerSideError", "HeadChangedError",
]
