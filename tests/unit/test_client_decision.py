"""Decisions from calibrated probabilities: every reason code, thresholds per call and per class."""

import numpy as np
import pytest

from headserve.client import BadInputError, HeadInfo, Reason, Thresholds, decide
from headserve.contract import EncoderIdentity, ServedHead
from headserve.encoders import get_encoder


def _info(ood: float | None = None, outputs=("logits", "probs", "embedding")) -> HeadInfo:
    served = ServedHead(name="h", classes=("cat", "dog", "fox", "background"), background_indices=(3,),
                        encoder=EncoderIdentity.from_spec(get_encoder("clip:tiny")), ood_threshold=ood)
    return HeadInfo(served, max_batch_size=8, outputs=outputs)


PROBS = np.array([
    [0.90, 0.05, 0.03, 0.02],  # confident cat
    [0.10, 0.05, 0.05, 0.80],  # background
    [0.40, 0.30, 0.20, 0.10],  # low confidence at the default 0.5
    [0.52, 0.46, 0.01, 0.01],  # ambiguous: margin 0.06 < 0.1
], dtype=np.float32)


def test_each_row_gets_its_reason_with_default_thresholds():
    preds = decide(_info(), PROBS)
    assert [p.reason for p in preds] == [Reason.ACCEPTED, Reason.BACKGROUND, Reason.LOW_CONFIDENCE, Reason.AMBIGUOUS]
    assert preds[0].label == "cat" and preds[0].accepted
    assert preds[0].top_k[:2] == (("cat", pytest.approx(0.9)), ("dog", pytest.approx(0.05)))
    assert preds[3].margin == pytest.approx(0.06, abs=1e-6)


def test_ood_score_above_the_published_threshold_rejects_first():
    preds = decide(_info(ood=0.5), PROBS, ood_scores=np.array([[0.9], [0.1], [0.1], [0.1]], np.float32))
    assert preds[0].reason is Reason.OUT_OF_DISTRIBUTION and preds[0].ood_score == pytest.approx(0.9)
    assert preds[1].reason is Reason.BACKGROUND


def test_call_threshold_overrides_the_published_ood_threshold():
    scores = np.full((4, 1), 0.3, np.float32)
    assert decide(_info(ood=0.5), PROBS, Thresholds(ood_threshold=0.2), ood_scores=scores)[0].reason \
        is Reason.OUT_OF_DISTRIBUTION
    assert decide(_info(ood=None), PROBS, ood_scores=scores)[0].reason is Reason.ACCEPTED


def test_per_class_confidence_and_margin_override_the_defaults():
    t = Thresholds(per_class_confidence={"cat": 0.95})
    assert decide(_info(), PROBS[:1], t)[0].reason is Reason.LOW_CONFIDENCE
    relaxed = Thresholds(min_confidence=0.3, per_class_margin={"cat": 0.01})
    assert decide(_info(), PROBS, relaxed)[3].reason is Reason.ACCEPTED


def test_per_class_threshold_for_an_unknown_class_is_refused_with_the_class_list():
    with pytest.raises(BadInputError, match=r"'cow' is not a class of head 'h'.*cat, dog, fox"):
        decide(_info(), PROBS, Thresholds(per_class_confidence={"cow": 0.5}))


def test_threshold_outside_unit_interval_is_refused():
    with pytest.raises(BadInputError, match=r"min_margin=1.5 is outside \[0, 1\]"):
        Thresholds(min_margin=1.5)
