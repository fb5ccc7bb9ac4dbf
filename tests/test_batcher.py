"""The batch policy: a pure function, tested without sleeps."""

from __future__ import annotations

import pytest

from fluxserve.engine.batcher import BatchPolicy, batchable, wait_for_more


def test_no_batching_never_waits():
    assert wait_for_more(BatchPolicy(), size=1, oldest_queued_at=100.0, now=100.0) == 0.0


def test_a_full_batch_runs_now():
    policy = BatchPolicy(max_size=4, max_wait=0.05)
    assert wait_for_more(policy, size=4, oldest_queued_at=100.0, now=100.0) == 0.0


def test_a_partial_batch_waits_out_the_rest_of_the_oldest_jobs_window():
    policy = BatchPolicy(max_size=4, max_wait=0.05)
    assert wait_for_more(policy, 2, oldest_queued_at=100.0, now=100.01) == pytest.approx(0.04)
    assert wait_for_more(policy, 2, oldest_queued_at=100.0, now=100.05) == 0.0
    assert wait_for_more(policy, 2, oldest_queued_at=100.0, now=101.0) == 0.0  # long queued


def test_waiting_off_runs_partial_batches_at_once():
    assert wait_for_more(BatchPolicy(max_size=8, max_wait=0.0), 3, 100.0, 100.0) == 0.0


@pytest.mark.parametrize(("size", "wait"), [(0, 0.1), (1, -0.1)])
def test_bad_policies_are_refused(size, wait):
    with pytest.raises(ValueError, match="max_size must be at least 1"):
        BatchPolicy(max_size=size, max_wait=wait)


def test_only_single_image_text_to_image_jobs_batch():
    assert batchable(1, "text-to-image")
    assert not batchable(2, "text-to-image")
    assert not batchable(1, "edit")
