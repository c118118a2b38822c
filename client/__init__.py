"""headserve.client: ask a Triton server for calibrated decisions over gRPC, without torch.

Only tritonclient[grpc], numpy and pillow are imported here and below; the preprocessing comes from
``headserve.preprocess``, the same code training used.
"""

from headserve.client.client import HeadClient, HeadInfo, Prediction
from headserve.client.errors import ClientError, HeadNotFoundError, ServerUnavailableError

__all__ = ["HeadClient", "HeadInfo", "Prediction", "ClientError", "HeadNotFoundError", "ServerUnavailableError"]
