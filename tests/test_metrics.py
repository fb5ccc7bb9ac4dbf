"""GET /metrics: Prometheus text derived from the job store, after real jobs on tiny."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fluxserve.api.app import create_app
from fluxserve.api.common.metrics import EndedJobFeed, JobMetrics
from fluxserve.config import Settings
from fluxserve.domain import GenerationRequest, Job, JobStatus
from fluxserve.store.sqlite import SqliteJobStore
from fluxserve.store.tables import jobs
from tests.helpers import SMALL, poll_result, wait_for, wait_ready

FAST = {**SMALL, "steps": 2}
# Runs for seconds on CPU: the cancel below stops it early.
LONG = {"image_size": "square_hd", "num_inference_steps": 50}


def scrape(client: TestClient) -> dict[str, list]:
    """{family name: [samples]} of one /metrics answer."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def value(families: dict, sample: str, **labels: str) -> float | None:
    """The value of the sample ``sample`` whose labels include ``labels`` (None: absent)."""
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    family = family.removesuffix("_bucket")
    for item in families.get(family, []):
        if item.name == sample and labels.items() <= item.labels.items():
            return item.value
    return None


def submit_bfl(client: TestClient, prompt: str, **fields) -> str:
    response = client.post("/v1/flux-dev", json={"prompt": prompt, **FAST, **fields})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_jobs_counted_by_outcome_with_their_times(client):
    job_store = client.app.state.services.store
    # One after the other: queued together, the two would run as one batch of 2.
    for seed in (1, 2):
        assert poll_result(client, submit_bfl(client, "a fox", seed=seed))["status"] == "Ready"
    # A long job, cancelled while it runs (fal's queue API).
    response = client.post("/queue/fal-ai/flux/dev", json={"prompt": "stop me", **LONG})
    assert response.status_code == 200, response.text
    submitted = response.json()
    wait_for(lambda: (job_store.get(submitted["request_id"]).progress or 0) > 0, "a step")
    assert client.put(submitted["cancel_url"]).status_code == 202
    wait_for(
        lambda: job_store.get(submitted["request_id"]).status is JobStatus.CANCELLED,
        "the cancel",
    )

    families = scrape(client)
    assert value(families, "fluxserve_jobs_ended_total", model="tiny", status="succeeded") == 2
    assert value(families, "fluxserve_jobs_ended_total", model="tiny", status="cancelled") == 1
    assert value(families, "fluxserve_jobs_ended_total", status="failed") is None
    # Every job was started by the worker: each has a time in the queue.
    assert value(families, "fluxserve_job_queue_seconds_count", model="tiny") == 3
    # Only the jobs that made images have a generation and a step time.
    assert value(families, "fluxserve_job_generation_seconds_count", model="tiny") == 2
    assert value(families, "fluxserve_job_step_seconds_count", model="tiny") == 2
    generation = value(families, "fluxserve_job_generation_seconds_sum", model="tiny")
    step = value(families, "fluxserve_job_step_seconds_sum", model="tiny")
    assert generation > 0
    assert step == pytest.approx(generation / 2)  # two steps each
    # One job at a time: each ran in a batch of one.
    assert value(families, "fluxserve_job_batch_size_count", model="tiny") == 3
    assert value(families, "fluxserve_job_batch_size_sum", model="tiny") == 3
    assert value(families, "fluxserve_queue_depth", model="tiny") == 0
    assert value(families, "fluxserve_jobs_running", model="tiny") == 0
    # The worker registered itself, with its models.
    assert value(families, "fluxserve_workers_up") == 1
    (worker,) = families["fluxserve_worker_up"]
    assert worker.value == 1
    assert worker.labels["models"] == "tiny"
    (last_seen,) = families["fluxserve_worker_last_seen_timestamp_seconds"]
    assert last_seen.labels["worker"] == worker.labels["worker"]
    if worker.labels["device"] == "cpu":  # no GPU memory to report
        assert families.get("fluxserve_worker_gpu_memory_bytes", []) == []
    else:
        assert worker.labels["device"].startswith("cuda")

    # A second scrape counts no job twice.
    again = scrape(client)
    assert value(again, "fluxserve_jobs_ended_total", model="tiny", status="succeeded") == 2
    assert value(again, "fluxserve_job_queue_seconds_count", model="tiny") == 3


def test_queue_depth_per_model_and_jobs_that_never_ran(idle_client):
    """No worker runs: submitted jobs wait, and the gauge says how many."""
    families = scrape(idle_client)
    assert value(families, "fluxserve_queue_depth", model="tiny") == 0  # a loaded model: 0
    queued = [submit_bfl(idle_client, f"fox {n}") for n in range(3)]
    families = scrape(idle_client)
    assert value(families, "fluxserve_queue_depth", model="tiny") == 3
    assert value(families, "fluxserve_workers_up") == 0

    idle_client.app.state.services.jobs.cancel(queued[0])
    families = scrape(idle_client)
    assert value(families, "fluxserve_queue_depth", model="tiny") == 2
    assert value(families, "fluxserve_jobs_ended_total", model="tiny", status="cancelled") == 1
    # It never started: no time in the queue, no batch.
    assert value(families, "fluxserve_job_queue_seconds_count", model="tiny") is None


def test_batch_size_of_jobs_run_together(tmp_path, tiny_model_dir):
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        max_batch_size=4,
    )
    app = create_app(settings)
    # Queued before the worker starts: it claims all three as one batch.
    ids = [submit_bfl(TestClient(app), "a fox", seed=seed) for seed in (1, 2, 3)]
    with TestClient(app) as client:
        wait_ready(client)
        for job_id in ids:
            assert poll_result(client, job_id)["status"] == "Ready"
        store = client.app.state.services.store
        assert [store.get(job_id).batch_size for job_id in ids] == [3, 3, 3]
        families = scrape(client)
    assert value(families, "fluxserve_job_batch_size_count", model="tiny") == 3
    assert value(families, "fluxserve_job_batch_size_sum", model="tiny") == 9
    bucket = "fluxserve_job_batch_size_bucket"
    assert value(families, bucket, model="tiny", le="2.0") == 0
    assert value(families, bucket, model="tiny", le="3.0") == 3


# -- the feed of ended jobs: each counted once, whatever the order of the writes ----------------


@pytest.fixture
def store(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield store
    store.close()


def ended(store, job_id: str, finished_at: float, status=JobStatus.SUCCEEDED) -> None:
    request = GenerationRequest(
        model="m", prompt="p", width=256, height=256, steps=4, guidance=None, seed=1
    )
    store.create(Job(id=job_id, request=request, created_at=finished_at - 3))
    with store.engine.begin() as conn:
        conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(status=status.value, started_at=finished_at - 2, finished_at=finished_at)
        )


def test_feed_returns_each_ended_job_once_across_pages(store):
    feed = EndedJobFeed(start=1000.0, grace=30.0, page=2)
    for n in range(5):  # equal end times: the page boundary is on seq
        ended(store, f"same-{n}", 1010.0)
    ended(store, "before-start", 999.0)
    got = feed.poll(store, now=1020.0)
    assert sorted(job.id for job in got) == [f"same-{n}" for n in range(5)]
    assert feed.poll(store, now=1021.0) == []


def test_feed_counts_an_end_written_late_within_the_grace(store):
    feed = EndedJobFeed(start=1000.0, grace=30.0)
    ended(store, "a", 1100.0)
    assert [job.id for job in feed.poll(store, now=1101.0)] == ["a"]
    # Written after that scrape, with an earlier end time (a slow commit, a clock behind).
    ended(store, "late", 1080.0)
    ended(store, "too-late", 1060.0)  # further behind than the grace: not counted
    assert [job.id for job in feed.poll(store, now=1102.0)] == ["late"]
    assert feed.poll(store, now=1103.0) == []


def test_feed_is_not_blinded_by_a_clock_ahead(store):
    feed = EndedJobFeed(start=1000.0, grace=30.0)
    ended(store, "ahead", 5000.0)  # a worker whose clock runs an hour ahead
    assert [job.id for job in feed.poll(store, now=1100.0)] == ["ahead"]
    ended(store, "on-time", 1099.0)
    assert [job.id for job in feed.poll(store, now=1101.0)] == ["on-time"]


def test_counters_outlive_the_purge_of_old_jobs(store):
    """The counters count ends as they are seen: deleting the rows later lowers nothing."""
    now = time.time()
    metrics = JobMetrics(store, lease_seconds=30, start=now - 60)
    ended(store, "x", now - 10)
    ended(store, "y", now - 5, JobStatus.FAILED)
    metrics.update()
    store.delete_jobs(["x", "y"])
    body, _ = metrics.render()
    families = {f.name: f.samples for f in text_string_to_metric_families(body.decode())}
    assert value(families, "fluxserve_jobs_ended_total", model="m", status="succeeded") == 1
    assert value(families, "fluxserve_jobs_ended_total", model="m", status="failed") == 1
    assert value(families, "fluxserve_job_step_seconds_sum", model="m") == pytest.approx(0.5)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 0


class FailingSecondRead:
    """The store, except that its second read of ended jobs fails (the database went away)."""

    def __init__(self, store) -> None:
        self.store, self.reads = store, 0

    def ended_since(self, *args):
        self.reads += 1
        if self.reads == 2:
            raise sa.exc.OperationalError("SELECT", {}, Exception("connection lost"))
        return self.store.ended_since(*args)


def test_feed_loses_no_job_when_a_read_fails(store):
    feed = EndedJobFeed(start=1000.0, grace=30.0, page=2)
    for n in range(3):
        ended(store, f"j{n}", 1010.0 + n)
    flaky = FailingSecondRead(store)
    with pytest.raises(sa.exc.OperationalError):
        feed.poll(flaky, now=1020.0)  # the first page was read, the second failed
    assert sorted(job.id for job in feed.poll(flaky, now=1021.0)) == ["j0", "j1", "j2"]


def test_a_long_gap_is_caught_up_over_several_scrapes(store, monkeypatch):
    from fluxserve.api.common import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MAX_PAGES", 2)
    feed = EndedJobFeed(start=1000.0, grace=5.0, page=2)
    for n in range(9):
        ended(store, f"j{n}", 1010.0 + 10 * n)
    first = feed.poll(store, now=1200.0)
    assert len(first) == 4  # two pages of two, no more in one scrape
    rest = feed.poll(store, now=1201.0) + feed.poll(store, now=1202.0)
    assert sorted(job.id for job in first + rest) == [f"j{n}" for n in range(9)]
