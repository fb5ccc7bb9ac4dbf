"""Group commit of job creates: concurrent submits share a transaction, and each keeps its
own outcome (limits, credits and Idempotency-Keys as if it had been written alone)."""

from __future__ import annotations

import threading
import time
import uuid

from sqlalchemy.exc import IntegrityError

from fluxserve.domain import GenerationRequest, Job
from fluxserve.errors import PaymentRequired, TooManyRequests
from fluxserve.jobs.access import KeyRing
from fluxserve.store.group_commit import GroupCommit
from fluxserve.store.keys import KeyStore
from fluxserve.store.tables import SubmitLimits
from tests.helpers import wait_for

REQUEST = GenerationRequest(model="tiny", prompt="p", width=64, height=64, steps=1,
                            guidance=None, seed=1)  # fmt: skip


class Held:
    """A write function whose first call waits for ``release``: what arrives meanwhile
    queues behind it and is written as the next group."""

    def __init__(self, write) -> None:
        self.write = write
        self.entered, self.gate = threading.Event(), threading.Event()
        self.groups: list[list] = []

    def __call__(self, items):
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        return self.write(items)


def caller(commit: GroupCommit, outcomes: dict[int, object]):
    """A thread target per item: ``commit.run(i)``'s result, or what it raised."""

    def call(i: int):
        def run() -> None:
            try:
                outcomes[i] = commit.run(i)
            except Exception as exc:
                outcomes[i] = exc

        return run

    return call


def run_all(targets) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def test_what_arrives_during_a_write_is_written_together_with_its_own_outcomes():
    def write(items):
        return [ValueError(f"no {i}") if i % 3 == 0 else i * 10 for i in items]

    held = Held(write)
    commit = GroupCommit(held, limit=64)
    outcomes: dict[int, object] = {}
    call = caller(commit, outcomes)

    first = run_all([call(1)])
    assert held.entered.wait(10)
    rest = run_all([call(i) for i in range(2, 9)])
    wait_for(lambda: commit.pending == 7, "seven creates waiting")
    held.gate.set()
    for thread in first + rest:
        thread.join(10)
    assert [len(g) for g in held.groups] == [1, 7]
    said = {i: str(o) if isinstance(o, Exception) else o for i, o in outcomes.items()}
    assert said == {i: f"no {i}" if i % 3 == 0 else i * 10 for i in range(1, 9)}


def test_a_failed_group_fails_each_of_its_callers_and_the_next_group_still_runs():
    calls = []

    def write(items):
        calls.append(list(items))
        if len(calls) == 2:
            raise ConnectionError("database went away")
        return items

    held = Held(write)
    commit = GroupCommit(held, limit=3)
    outcomes: dict[int, object] = {}
    call = caller(commit, outcomes)

    first = run_all([call(0)])
    assert held.entered.wait(10)
    rest = run_all([call(i) for i in range(1, 6)])
    wait_for(lambda: commit.pending == 5, "five creates waiting")
    held.gate.set()
    for thread in first + rest:
        thread.join(10)
    # Groups of at most 3: [0], then two of the five (one failed group), then the rest.
    assert [len(g) for g in held.groups] == [1, 3, 2]
    failed = held.groups[1]
    for i in range(6):
        if i in failed:
            assert isinstance(outcomes[i], ConnectionError)
        else:
            assert outcomes[i] == i
    # Each caller raised an exception object of its own.
    assert len({id(outcomes[i]) for i in failed}) == len(failed)
    assert commit.run(99) == 99  # and the lead was handed back: a lone write is at once


def test_creates_written_in_one_transaction_keep_their_own_limits_credits_and_keys(
    job_store, monkeypatch
):
    store = job_store
    ring = KeyRing(KeyStore(store.engine))
    paid, _ = ring.create("paid", credits=3)
    tight, _ = ring.create("tight", max_active=1)
    begins: list[float] = []
    gate, entered = threading.Event(), threading.Event()
    begin_write = store._begin_write

    def held_begin(conn) -> None:
        begins.append(time.monotonic())
        if len(begins) == 1:  # the first create's transaction holds the others back
            entered.set()
            assert gate.wait(10)
        begin_write(conn)

    monkeypatch.setattr(store, "_begin_write", held_begin)
    outcomes: dict[str, object] = {}

    def create(name: str, owner: str = "", limits=None, idempotency_key=None):
        def run() -> None:
            job = Job(id=str(uuid.uuid4()), request=REQUEST, owner=owner,
                      idempotency_key=idempotency_key)  # fmt: skip
            try:
                outcomes[name] = store.create(job, limits).seq
            except (PaymentRequired, TooManyRequests, IntegrityError) as exc:
                outcomes[name] = type(exc).__name__

        return run

    first = run_all([create("first")])
    assert entered.wait(10)
    costly = SubmitLimits(cost=1.0)
    rest = run_all(
        [create(f"paid-{i}", paid.id, costly) for i in range(4)]
        + [create(f"tight-{i}", tight.id, SubmitLimits(max_active=1)) for i in range(2)]
        + [create(f"key-{i}", "someone", idempotency_key="order-1") for i in range(2)]
    )
    wait_for(lambda: store._creates.pending == 8, "eight creates waiting")
    gate.set()
    for thread in first + rest:
        thread.join(10)
    assert len(begins) == 2, "the eight waiting creates were written in one transaction"
    refused = {name.split("-")[0]: v for name, v in outcomes.items() if isinstance(v, str)}
    # One paid job past the budget, one past its key's active limit, one repeated key.
    assert refused == {"paid": "PaymentRequired", "tight": "TooManyRequests",
                       "key": "IntegrityError"}  # fmt: skip
    seqs = [v for v in outcomes.values() if isinstance(v, int)]
    assert len(seqs) == len(set(seqs)) == 1 + 3 + 1 + 1
    # Exactly the three jobs that got in were charged; the refused one's charge was undone.
    assert ring.remaining_credits(paid) == 0
    assert store.find_idempotent("someone", "order-1") is not None
    assert sum(store.queued_counts().values()) == 6
