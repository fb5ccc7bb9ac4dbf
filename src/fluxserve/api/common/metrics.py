"""GET /metrics: Prometheus metrics, derived from the job store at each scrape.

Workers are other processes, on other hosts in cluster mode, so nothing here counts in
memory as jobs run: every number comes from the job database.

- Gauges (queue depth, running jobs, workers, GPU memory) are read at scrape time: a few
  indexed GROUP BY / small-table queries.
- Counters and histograms (jobs ended by outcome, queue, generation and step time, batch
  sizes) are kept by this API process and fed, at each scrape, with the jobs that ended since
  the last one: a keyset read of the ``(finished_at, seq)`` index from a high-water mark. So
  they are ordinary monotonic Prometheus counters that survive the purge of old jobs
  (``--job-retention``): they start at zero when the API process starts and count the jobs
  that ended after that. Every API replica reads the same database, so every replica reports
  the whole cluster's numbers: scrape one, or aggregate replicas with ``max``.

A job's end is written with its worker's clock and may commit a little late (a slow write):
each read looks back ``GRACE`` seconds behind the newest end seen, and ids already counted
are skipped, so such a job is still counted exactly once (clocks must agree within that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from fluxserve.domain import JobStatus
from fluxserve.jobs.stats import EndedJob, JobStats, MetricsSource

GRACE = 30.0  # seconds a late-written job end is still counted (see the module docstring)
PAGE = 1000  # ended jobs read per query
# Pages one scrape reads at most: the first scrape after a long gap must not read (and
# hold) a whole day of jobs; the rest follow at the next scrapes.
MAX_PAGES = 20

QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LORA_SWAP_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Outcomes that made images: only these have a meaningful generation and step time.
MADE_IMAGES = (JobStatus.SUCCEEDED, JobStatus.CONTENT_MODERATED)

router = APIRouter(tags=["health"])


class EndedJobFeed:
    """The jobs that ended since the last ``poll``, each returned once."""

    def __init__(self, start: float, grace: float = GRACE, page: int = PAGE) -> None:
        self.start = start  # jobs that ended before this are never returned
        self.grace = grace
        self.page = page
        self.high = start  # the newest end seen (capped at this process's clock)
        self._seen: dict[str, float] = {}  # ids returned, whose end is within the grace

    def poll(self, store: JobStats, now: float | None = None) -> list[EndedJob]:
        now = time.time() if now is None else now
        read: list[EndedJob] = []  # every page first: a failed read changes nothing
        after, after_seq = max(self.start, self.high - self.grace), 0
        for _ in range(MAX_PAGES):  # a long gap is caught up over several scrapes
            page = store.ended_since(after, after_seq, self.page)
            read += page
            if len(page) < self.page:
                break
            after, after_seq = page[-1].finished_at, page[-1].seq
        new: list[EndedJob] = []
        for job in read:
            if job.id not in self._seen:
                self._seen[job.id] = job.finished_at
                new.append(job)
            # A worker clock ahead of ours must not hide the jobs of the others.
            self.high = max(self.high, min(job.finished_at, now))
        floor = self.high - self.grace
        self._seen = {job_id: end for job_id, end in self._seen.items() if end >= floor}
        return new


class StoreGauges(Collector):
    """What the job store says now: queue depth, running jobs, the workers table."""

    def __init__(self, store: MetricsSource, lease_seconds: float, models: Iterable[str]) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.models = list(models)  # reported (as 0) even when they have no jobs

    def collect(self) -> Iterator[Metric]:
        counts = self.store.active_counts()
        queued = GaugeMetricFamily(
            "fluxserve_queue_depth", "Jobs waiting in the queue, by model.", labels=["model"]
        )
        running = GaugeMetricFamily(
            "fluxserve_jobs_running", "Jobs a worker is running now, by model.", labels=["model"]
        )
        for model in sorted({*self.models, *counts}):
            queued.add_metric([model], counts.get(model, {}).get("queued", 0))
            running.add_metric([model], counts.get(model, {}).get("running", 0))
        yield queued
        yield running
        yield from self._workers()

    def _workers(self) -> Iterator[Metric]:
        now = time.time()
        records = self.store.list_workers()
        up = GaugeMetricFamily(
            "fluxserve_worker_up",
            "Each registered worker: 1 when it beat within the last 3 leases, 0 when stale.",
            labels=["worker", "host", "device", "models"],
        )
        seen = GaugeMetricFamily(
            "fluxserve_worker_last_seen_timestamp_seconds",
            "When each worker last beat (Unix time).",
            labels=["worker"],
        )
        memory = GaugeMetricFamily(
            "fluxserve_worker_gpu_memory_bytes",
            "GPU memory each CUDA worker's tensors hold (torch.cuda.memory_allocated).",
            labels=["worker"],
        )
        peak = GaugeMetricFamily(
            "fluxserve_worker_gpu_memory_peak_bytes",
            "The most GPU memory each CUDA worker's tensors held (max_memory_allocated).",
            labels=["worker"],
        )
        alive = 0
        for record in records:
            stale = record.is_stale(self.lease_seconds, now)
            alive += not stale
            labels = [record.id, record.host, record.device, ",".join(record.models)]
            up.add_metric(labels, 0 if stale else 1)
            seen.add_metric([record.id], record.last_seen)
            if record.gpu_memory_bytes is not None:
                memory.add_metric([record.id], record.gpu_memory_bytes)
            if record.gpu_memory_peak_bytes is not None:
                peak.add_metric([record.id], record.gpu_memory_peak_bytes)
        yield GaugeMetricFamily(
            "fluxserve_workers_up", "Registered workers that beat within the last 3 leases.", alive
        )
        yield from (up, seen, memory, peak)


class JobMetrics:
    """The /metrics registry of one API process."""

    def __init__(
        self,
        store: MetricsSource,
        lease_seconds: float,
        models: Iterable[str] = (),
        start: float | None = None,
    ) -> None:
        self.store = store
        self.feed = EndedJobFeed(time.time() if start is None else start)
        self._lock = threading.Lock()  # one scrape at a time reads and feeds
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.ended = Counter(
            "fluxserve_jobs_ended",
            "Jobs that ended since this API process started, by outcome (status) and model.",
            ["model", "status"],
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "fluxserve_job_queue_seconds",
            "Time from submit to a worker's start (started_at - created_at) of each job that "
            "a worker started, observed when it ends.",
            labels,
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.generation_time = Histogram(
            "fluxserve_job_generation_seconds",
            "Time from a worker's start to the end (finished_at - started_at) of each job "
            "that made images: checks, denoising, encoding and storing.",
            labels,
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.step_time = Histogram(
            "fluxserve_job_step_seconds",
            "Generation time divided by the denoising steps, for each job that made images.",
            labels,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fluxserve_job_batch_size",
            "The size of the batch each started job ran in (1: alone), observed per job.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.lora_disk = Counter(
            "fluxserve_lora_disk",
            "LoRAs a started job needed, by where the worker found it: cached (a hit of the "
            "disk cache) or download (a miss).",
            ["result"],
            registry=self.registry,
        )
        self.lora_gpu = Counter(
            "fluxserve_lora_gpu",
            "LoRAs a job applied, by what it took on the GPU: loaded (already there), load, "
            "hotswap, or unused (scale 0).",
            ["result"],
            registry=self.registry,
        )
        self.lora_swap = Histogram(
            "fluxserve_lora_swap_seconds",
            "Time to make a LoRA active on the GPU (a check and a load or hot-swap; ~0 when "
            "it was already loaded).",
            buckets=LORA_SWAP_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(StoreGauges(store, lease_seconds, models))

    def observe(self, job: EndedJob) -> None:
        self.ended.labels(job.model, job.status.value).inc()
        for lora in job.loras:
            if "disk" in lora:
                self.lora_disk.labels(lora["disk"]).inc()
            if "gpu" in lora:
                self.lora_gpu.labels(lora["gpu"]).inc()
            if "swap_seconds" in lora:
                self.lora_swap.observe(lora["swap_seconds"])
        if job.started_at is None:  # ended before it ran: cancelled in the queue, refused
            return
        self.queue_time.labels(job.model).observe(max(0.0, job.started_at - job.created_at))
        if job.batch_size:
            self.batch_size.labels(job.model).observe(job.batch_size)
        if job.status in MADE_IMAGES:
            seconds = max(0.0, job.finished_at - job.started_at)
            self.generation_time.labels(job.model).observe(seconds)
            if job.steps > 0:
                self.step_time.labels(job.model).observe(seconds / job.steps)

    def update(self) -> None:
        """Feed the counters with the jobs that ended since the last update."""
        with self._lock:
            for job in self.feed.poll(self.store):
                self.observe(job)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when asked) and its type."""
        self.update()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus metrics of the queue, the jobs and the workers (no API key: protect it at
    the proxy if it must not be public)."""
    body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


def install_metrics(app: FastAPI) -> None:
    """Serve /metrics for the app's services; its counters start now."""
    services = app.state.services
    app.state.metrics = JobMetrics(
        services.store, services.settings.lease_seconds, services.models.keys()
    )
    app.include_router(router)
