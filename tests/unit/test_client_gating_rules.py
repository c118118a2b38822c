"""Recipe gating in isolation: prefilter, head reasons, target checks and the compute estimate."""

import numpy as np
import pytest

from headserve.client import BadInputError, ComputeEstimate, GateConfig, GateReason, HeadInfo, Thresholds, decide, gate
from headserve.client.errors import ServerSideError
from headserve.contract import EncoderIdentity, ServedHead
from headserve.encoders import get_encoder


def _info(prompt_classes=(0, 0, 1, 2)) -> HeadInfo:
    served = ServedHead(name="h", classes=("cat", "dog", "fox", "background"), background_indices=(3,),
                        encoder=EncoderIdentity.from_spec(get_encoder("clip:tiny")), prompt_model="h_prompts",
                        prompt_classes=prompt_classes)
    return HeadInfo(served, max_batch_size=8, outputs=("probs",))


PROBS = np.array([[0.9, 0.05, 0.03, 0.02], [0.9, 0.05, 0.03, 0.02], [0.05, 0.9, 0.03, 0.02],
                  [0.1, 0.1, 0.0, 0.8], [0.52, 0.46, 0.01, 0.01]], np.float32)
# Similarity to prompts (cat, cat, dog, fox): the target's best prompt counts.
SIMS = np.array([[0.1, 0.5, 0.0, 0.0], [0.1, 0.1, 0.9, 0.9], [0.6, 0.0, 0.0, 0.0],
                 [0.6, 0.0, 0.0, 0.0], [0.6, 0.0, 0.0, 0.0]], np.float32)


def test_prefilter_drops_first_then_head_reasons_apply():
    info = _info()
    results = gate(info, decide(info, PROBS), GateConfig("cat", prompt_threshold=0.3), SIMS)
    assert [r.reason for r in results] == [GateReason.KEPT, GateReason.PROMPT_MISMATCH, GateReason.OTHER_CLASS,
                                           GateReason.BACKGROUND, GateReason.AMBIGUOUS]
    assert [r.kept for r in results] == [True, False, False, False, False]
    assert results[0].prompt_similarity == pytest.approx(0.5)


def test_without_similarities_gating_is_head_only():
    info = _info()
    results = gate(info, decide(info, PROBS), GateConfig("cat"))
    assert [r.kept for r in results] == [True, True, False, False, False]
    assert all(r.prompt_similarity is None for r in results)


def test_a_background_target_is_refused():
    with pytest.raises(BadInputError, match="'background' is a background class"):
        gate(_info(), decide(_info(), PROBS), GateConfig("background"))


def test_a_target_with_no_prompt_is_a_server_side_error_naming_the_prompt_classes():
    info = _info(prompt_classes=(0, 0, 1, 1))
    with pytest.raises(ServerSideError, match=r"no prompt for class 'fox'.*use_prefilter=False"):
        gate(info, decide(info, PROBS, Thresholds(0, 0)), GateConfig("fox"), SIMS)


def test_estimate_adds_the_prefilter_only_where_there_is_one():
    clip = ComputeEstimate("h", 1000, preprocess_s=0.001, head_s=0.004, prefilter_s=0.0005, batch_size=8)
    dino = ComputeEstimate("d", 1000, preprocess_s=0.001, head_s=0.004, prefilter_s=None, batch_size=8)
    assert clip.per_candidate_with_prefilter_s == pytest.approx(0.0055)
    assert clip.to_json()["with_prefilter"]["s_total"] == pytest.approx(5.5)
    assert dino.per_candidate_with_prefilter_s is None and dino.to_json()["with_prefilter"] is None
    assert dino.to_json()["without_prefilter"]["s_total"] == pytest.approx(5.0)
