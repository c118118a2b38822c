"""Whether the prompt prefilter runs for a head: only CLIP heads that publish a prompt model have one."""

from __future__ import annotations

import logging
import threading

from headserve.client.discovery import HeadInfo

log = logging.getLogger("headserve.client")
DINOV3_PREFILTER_MESSAGE = "prompt prefilter disabled for DINOv3"


class PrefilterPolicy:
    """Decides per head whether the prompt prefilter runs, logging why not once per client and cause.

    One notice per cause, not per call: a mining run gates millions of crops through the same head.
    """

    def __init__(self) -> None:
        self._told: set[str] = set()
        self._lock = threading.Lock()  # the sync client decides from several threads at once

    def active(self, info: HeadInfo, wanted: bool) -> bool:
        """True when the caller wants the prefilter and ``info``'s head can run it."""
        if not wanted:
            return False
        if not info.prefilter_supported:
            self._once(info.encoder_type, DINOV3_PREFILTER_MESSAGE if info.encoder_type == "dinov3"
                       else f"prompt prefilter disabled for {info.encoder_type}")
            return False
        if info.prompt_model is None:
            self._once(info.name, f"prompt prefilter unavailable for head {info.name!r}: it publishes no "
                                  "prompt_model; gating on the head only")
            return False
        return True

    def _once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._told:
                return
            self._told.add(key)
        log.info(message)
