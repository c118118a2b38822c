"""The batching plan: how one call's rows become requests and come back in order."""

import numpy as np
import pytest

from headserve.client import BadInputError
from headserve.client.batching import BatchPlan


def test_a_plan_splits_rows_into_full_requests_and_one_short_one():
    plan = BatchPlan(rows=11, max_batch=4)
    assert plan.slices == [slice(0, 4), slice(4, 8), slice(8, 11)]
    assert [len(p) for p in plan.split(np.arange(11))] == [4, 4, 3]


def test_a_plan_joins_answers_back_in_the_callers_row_order():
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    plan = BatchPlan(rows=10, max_batch=3)
    answers = [{"probs": part * 2, "ood_score": part[:, :1]} for part in plan.split(rows)]
    joined = plan.join(answers)
    np.testing.assert_array_equal(joined["probs"], rows * 2)
    np.testing.assert_array_equal(joined["ood_score"], rows[:, :1])


def test_a_plan_of_no_rows_sends_nothing():
    assert BatchPlan(rows=0, max_batch=8).slices == [] and BatchPlan(0, 8).join([]) == {}


def test_a_plan_refuses_a_max_batch_below_one_naming_it():
    with pytest.raises(BadInputError, match="in batches of 0"):
        BatchPlan(rows=5, max_batch=0)
