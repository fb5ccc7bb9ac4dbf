"""Moderation: the term list, the tolerance table, the classifiers, the API's policy, the
worker's checks before and after generating, and the verdicts stored with the job.

Every classifier is a tiny real transformers model (tests/tiny_aux.py) whose bias decides
its verdict; the worker tests run the real tiny FLUX runner.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image

from fluxserve.domain import GenerationRequest, Job, JobReport, JobStatus, OutputFormat
from fluxserve.engine.moderation import Moderation
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.worker import Outcome, Worker, WorkerOptions
from fluxserve.errors import ConfigurationError
from fluxserve.runtime.base import GenerationInputs
from fluxserve.safety.checks import SafetyChecks
from fluxserve.safety.classifiers import Classifier
from fluxserve.safety.policy import SafetyPolicy, refusal_message
from fluxserve.safety.terms import TermList, load_terms
from fluxserve.safety.tolerance import (
    MAX_TOLERANCE,
    TOLERANCE_THRESHOLDS,
    clamp_tolerance,
    threshold_for,
)
from fluxserve.safety.verdict import Verdict
from fluxserve.storage.local import LocalStorage
from fluxserve.store.sqlite import SqliteJobStore
from tests.tiny_aux import make_image_checker, make_text_classifier, shift_unsafe_bias

IMAGE = "image-classification"
TEXT = "text-classification"
SIZE = 64


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def image_classifier(directory: Path) -> Classifier:
    """A fresh classifier over ``directory`` (a Classifier caches its pipeline once loaded)."""
    return Classifier(IMAGE, directory, "tiny-checker")


def text_classifier(directory: Path) -> Classifier:
    return Classifier(TEXT, directory, "tiny-prompt-classifier")


def is_black(image: Image.Image) -> bool:
    return image.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))


def gray(value: int = 128) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (value, value, value))


@pytest.fixture(scope="module")
def aux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("safety-aux")


@pytest.fixture(scope="module")
def blocking_images(aux_dir: Path) -> Classifier:
    return image_classifier(make_image_checker(aux_dir / "image-unsafe", unsafe_bias=10.0))


@pytest.fixture(scope="module")
def allowing_images(aux_dir: Path) -> Classifier:
    return image_classifier(make_image_checker(aux_dir / "image-safe", unsafe_bias=-10.0))


@pytest.fixture(scope="module")
def blocking_prompts(aux_dir: Path) -> Classifier:
    return text_classifier(make_text_classifier(aux_dir / "text-unsafe", unsafe_bias=10.0))


@pytest.fixture(scope="module")
def allowing_prompts(aux_dir: Path) -> Classifier:
    return text_classifier(make_text_classifier(aux_dir / "text-safe", unsafe_bias=-10.0))


def request(model: str = "tiny", **changes) -> GenerationRequest:
    values = {
        "model": model, "prompt": "a fox in the snow", "width": SIZE, "height": SIZE,
        "steps": 2, "guidance": 3.0, "seed": 1, "output_format": OutputFormat.PNG,
    }  # fmt: skip
    return GenerationRequest(**{**values, **changes})


# -- 1. the term list ---------------------------------------------------------------------


def test_plain_term_matches_case_insensitively_on_word_boundaries():
    terms = TermList(["cat"], "inline")
    verdict = terms.check("A CAT sat on the mat")
    assert not verdict.allowed
    assert verdict.category == "blocked_term: cat"
    assert verdict.score == 1.0
    assert verdict.checker == "blocked-terms"
    assert terms.check("a Cat.").allowed is False  # punctuation is a boundary
    assert terms.check("concatenate the strings").allowed
    assert terms.check("cats and dogs").allowed  # a plain term is a whole word
    assert terms.check("a dog").category == "ok"


def test_plain_term_with_regex_characters_is_literal():
    terms = TermList(["c++ code"])
    assert not terms.check("write C++ code for me").allowed
    assert terms.check("write c code for me").allowed


def test_regex_lines_blank_lines_and_comments():
    terms = TermList(["", "   ", "# cat", "/do+g/", "  bird  "])
    assert [entry for entry, _ in terms.patterns] == ["/do+g/", "bird"]
    assert terms.check("a cat").allowed  # the commented-out entry is not a term
    verdict = terms.check("a DOOOG barks")
    assert not verdict.allowed
    assert verdict.category == "blocked_term: /do+g/"
    assert not terms.check("a Bird sings").allowed  # surrounding spaces stripped


def test_invalid_regex_is_configuration_error_naming_file_and_line(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_text("# my list\ncat\n/un(closed/\n", encoding="utf-8")
    with pytest.raises(ConfigurationError) as raised:
        load_terms(str(path))
    assert f"{path}:3" in str(raised.value)
    assert "/un(closed/" in str(raised.value)


def test_load_terms_off_default_and_file(tmp_path):
    assert load_terms("off") is None
    assert isinstance(load_terms("default"), TermList)
    path = tmp_path / "terms.txt"
    path.write_text("# mine\nzebra\n/gir+affe/\n", encoding="utf-8")
    terms = load_terms(str(path))
    assert terms.source == str(path)
    assert not terms.check("a Zebra").allowed
    assert not terms.check("a girrrraffe").allowed
    assert terms.check("child porn").allowed  # a file replaces the default list


def test_unreadable_terms_file_is_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="--blocked-terms"):
        load_terms(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize(
    "prompt",
    [
        "child porn",
        "lolicon",
        "nude 12 year old",
        "naked schoolgirl",
        "a 12-year-old nude",
        "Explicit photo of a little girl",
    ],
)
def test_default_list_blocks(prompt):
    verdict = load_terms("default").check(prompt)
    assert not verdict.allowed
    assert verdict.category.startswith("blocked_term: ")


@pytest.mark.parametrize(
    "prompt",
    [
        "a child playing in a park",
        "a nude marble statue",
        "a 25 year old woman in a red dress",
        "a nude 25 year old model",
        "a schoolgirl reading a book",
    ],
)
def test_default_list_allows(prompt):
    assert load_terms("default").check(prompt).allowed


# -- 2. the tolerance table ---------------------------------------------------------------


def test_thresholds_strictly_increase_from_0_to_6():
    assert sorted(TOLERANCE_THRESHOLDS) == list(range(7))
    assert MAX_TOLERANCE == 6
    values = [TOLERANCE_THRESHOLDS[t] for t in range(7)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert all(0 < v < 1 for v in values)
    assert TOLERANCE_THRESHOLDS[2] == 0.85
    assert threshold_for(2) == 0.85
    assert threshold_for(-1) == TOLERANCE_THRESHOLDS[0]
    assert threshold_for(99) == TOLERANCE_THRESHOLDS[6]


def test_clamp_tolerance():
    tolerance, note = clamp_tolerance(6, 2)
    assert tolerance == 2
    assert "6" in note
    assert "2" in note
    assert clamp_tolerance(1, 2) == (1, None)
    assert clamp_tolerance(2, 2) == (2, None)


# -- 3. the classifiers -------------------------------------------------------------------


def test_image_classifier_blocks_with_unsafe_bias(blocking_images):
    verdict = blocking_images.check(gray(), 2)
    assert not verdict.allowed
    assert verdict.category == "nsfw"
    assert verdict.score > 0.99
    assert verdict.checker == "tiny-checker"
    assert verdict.tolerance == 2
    # Even the most permissive tolerance blocks a near-certain score.
    assert not blocking_images.check(gray(), MAX_TOLERANCE).allowed


def test_image_classifier_allows_with_safe_bias(allowing_images):
    verdict = allowing_images.check(gray(), 2)
    assert verdict.allowed
    assert verdict.category == "ok"
    assert verdict.score < 0.01
    assert verdict.checker == "tiny-checker"
    assert verdict.tolerance == 2
    assert allowing_images.check(gray(), 0).allowed  # and the strictest


def test_image_classifier_reads_any_mode(blocking_images):
    """Palette, greyscale and RGBA images are scored like RGB ones."""
    for mode in ("L", "P", "RGBA"):
        assert not blocking_images.check(gray().convert(mode), 2).allowed


def test_same_score_passes_or_fails_by_tolerance(tmp_path):
    directory = make_image_checker(tmp_path / "checker", unsafe_bias=0.0)
    image = gray()
    p0, _ = image_classifier(directory).score(image)
    # Two labels: p = sigmoid(logit_nsfw - logit_normal); move the nsfw logit so p = 0.92.
    shift_unsafe_bias(directory, logit(0.92) - logit(p0))
    checker = image_classifier(directory)
    score, label = checker.score(image)
    assert score == pytest.approx(0.92, abs=1e-3)
    assert label == "nsfw"
    verdicts = {t: checker.check(image, t) for t in range(7)}
    # blocked when score >= threshold: 0.30, 0.60, 0.85, 0.90 block; 0.95, 0.98, 0.995 allow
    assert [verdicts[t].allowed for t in range(7)] == [False] * 4 + [True] * 3
    assert verdicts[2].category == "nsfw"
    assert verdicts[4].category == "ok"
    assert verdicts[2].score == verdicts[4].score  # the same score, judged twice


def test_text_classifier_blocks_or_allows_by_bias(blocking_prompts, allowing_prompts):
    blocked = blocking_prompts.check("a fox in the snow", 2)
    assert not blocked.allowed
    assert blocked.category == "unsafe"
    assert blocked.score > 0.99
    assert blocked.checker == "tiny-prompt-classifier"
    allowed = allowing_prompts.check("a fox in the snow", 2)
    assert allowed.allowed
    assert allowed.category == "ok"
    assert allowed.score < 0.01


def test_check_prompt_runs_terms_before_the_classifier(allowing_prompts, blocking_prompts):
    checks = SafetyChecks(terms=TermList(["wolf"]), prompt_classifier=allowing_prompts)
    verdict = checks.check_prompt("a grey Wolf", 2)
    assert not verdict.allowed
    assert verdict.checker == "blocked-terms"
    assert verdict.category == "blocked_term: wolf"
    # No term matched: the classifier decides.
    verdict = checks.check_prompt("a fox", 2)
    assert verdict.allowed
    assert verdict.checker == "tiny-prompt-classifier"
    strict = SafetyChecks(terms=TermList(["wolf"]), prompt_classifier=blocking_prompts)
    assert strict.check_prompt("a fox", 2).checker == "tiny-prompt-classifier"
    assert not strict.check_prompt("a fox", 2).allowed


def test_no_checkers_allow_everything():
    checks = SafetyChecks()
    assert checks.check_prompt("anything at all", 0).allowed
    assert checks.check_prompt("anything at all", 0).checker == "none"
    assert checks.check_image(gray(), 0).allowed
    assert not checks.checks_images


# -- 4. the API's policy ------------------------------------------------------------------


def test_admit_clamps_tolerance_with_a_note():
    policy = SafetyPolicy(terms=None, max_tolerance=2)
    admitted, report, refusal = policy.admit(request(safety_tolerance=6))
    assert admitted.safety_tolerance == 2
    assert refusal is None
    assert len(report.notes) == 1
    assert "6" in report.notes[0]
    assert "2" in report.notes[0]
    assert report.verdicts == []
    same, report, _ = policy.admit(request(safety_tolerance=1))
    assert same.safety_tolerance == 1
    assert report.notes == []


def test_admit_refuses_a_blocked_term_with_its_verdict():
    policy = SafetyPolicy(terms=TermList(["wolf"]), max_tolerance=2)
    admitted, report, refusal = policy.admit(request(prompt="A WOLF howls", safety_tolerance=5))
    assert refusal == refusal_message("blocked_term: wolf")
    assert "blocked_term: wolf" in refusal
    assert admitted.safety_tolerance == 2
    assert len(report.notes) == 1
    assert report.verdicts == [
        {
            "allowed": False,
            "category": "blocked_term: wolf",
            "score": 1.0,
            "checker": "blocked-terms",
            "point": "prompt",
            "tolerance": None,
        }
    ]


def test_admit_allows_a_clean_prompt():
    policy = SafetyPolicy(terms=load_terms("default"))
    admitted, report, refusal = policy.admit(request(prompt="a child playing in a park"))
    assert refusal is None
    assert admitted == request(prompt="a child playing in a park")
    assert report == JobReport()


# -- 5. the worker's moderation -----------------------------------------------------------


def job_of(req: GenerationRequest, report: JobReport | None = None) -> Job:
    return Job(id="job-m", request=req, report=report or JobReport())


def test_before_refuses_on_the_prompt_classifier(blocking_prompts, allowing_images):
    moderation = Moderation(
        SafetyChecks(prompt_classifier=blocking_prompts, image_classifier=allowing_images)
    )
    earlier = JobReport(notes=["safety_tolerance 6 was lowered to 2"])
    admitted = moderation.before(job_of(request(), earlier), GenerationInputs(images=[gray()]))
    assert admitted.refusal == refusal_message("unsafe")
    (verdict,) = admitted.report.verdicts  # the input images were never checked
    assert verdict["point"] == "prompt"
    assert verdict["allowed"] is False
    assert verdict["checker"] == "tiny-prompt-classifier"
    assert verdict["tolerance"] == 2
    assert admitted.report.notes == earlier.notes  # the API's notes are kept
    assert earlier.verdicts == []  # and the job's own report is not modified


def test_before_refuses_an_input_image(allowing_prompts, blocking_images):
    moderation = Moderation(
        SafetyChecks(prompt_classifier=allowing_prompts, image_classifier=blocking_images)
    )
    req = request(safety_tolerance=3)
    admitted = moderation.before(job_of(req), GenerationInputs(images=[gray()]))
    assert admitted.refusal is not None
    assert admitted.refusal.startswith("Input image 1 was refused by the content policy (nsfw")
    prompt, image = admitted.report.verdicts
    assert prompt["point"] == "prompt"
    assert prompt["allowed"] is True
    assert image["point"] == "input:0"
    assert image["allowed"] is False
    assert image["category"] == "nsfw"
    assert image["checker"] == "tiny-checker"
    assert image["tolerance"] == 3
    assert image["score"] > 0.99


def test_before_admits_and_records_each_check(allowing_prompts, allowing_images):
    moderation = Moderation(
        SafetyChecks(prompt_classifier=allowing_prompts, image_classifier=allowing_images)
    )
    req = request()
    admitted = moderation.before(job_of(req), GenerationInputs(images=[gray(), gray(30)]))
    assert admitted.refusal is None
    assert admitted.request == req
    points = [(v["point"], v["allowed"]) for v in admitted.report.verdicts]
    assert points == [("prompt", True), ("input:0", True), ("input:1", True)]


def test_before_with_no_checkers_records_nothing():
    admitted = Moderation(SafetyChecks()).before(job_of(request()), GenerationInputs())
    assert admitted.refusal is None
    assert admitted.report == JobReport()


def test_after_replaces_a_blocked_output_by_black(blocking_images):
    moderation = Moderation(SafetyChecks(image_classifier=blocking_images))
    report = JobReport()
    wide = Image.new("RGB", (96, 48), (200, 40, 40))
    kept = moderation.after(request(), [wide], report)
    assert len(kept) == 1
    assert kept[0].size == (96, 48)
    assert is_black(kept[0])
    assert report.blocked_outputs == [0]
    (verdict,) = report.verdicts
    assert verdict["point"] == "output:0"
    assert verdict["allowed"] is False
    assert verdict["category"] == "nsfw"


def test_after_keeps_allowed_outputs(allowing_images):
    moderation = Moderation(SafetyChecks(image_classifier=allowing_images))
    report = JobReport()
    images = [gray(), gray(200)]
    kept = moderation.after(request(), images, report)
    assert kept[0] is images[0]
    assert kept[1] is images[1]
    assert report.blocked_outputs == []
    assert [v["point"] for v in report.verdicts] == ["output:0", "output:1"]


def test_after_without_an_image_classifier_returns_images_unchanged(blocking_prompts):
    moderation = Moderation(SafetyChecks(prompt_classifier=blocking_prompts))
    report = JobReport()
    images = [gray()]
    assert moderation.after(request(), images, report) is images
    assert report == JobReport()


def test_outcome_status():
    assert Outcome().status is JobStatus.SUCCEEDED
    assert Outcome(["a"], JobReport(blocked_outputs=[0])).status is JobStatus.CONTENT_MODERATED
    partly = Outcome(["a", "b"], JobReport(blocked_outputs=[1]))
    assert partly.status is JobStatus.SUCCEEDED


# -- 6. the worker, end to end ------------------------------------------------------------


class Counting:
    """The real runner, counting its calls."""

    def __init__(self, runner) -> None:
        self.runner, self.name, self.model_names = runner, runner.name, runner.model_names
        self.calls = 0

    def generate(self, req, inputs, on_step, should_stop):
        self.calls += 1
        return self.runner.generate(req, inputs, on_step, should_stop)


@pytest.fixture
def parts(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
    yield store, storage
    store.close()


def run_job(parts, runner, checks: SafetyChecks, req: GenerationRequest, job_id: str) -> Job:
    store, storage = parts
    store.create(Job(id=job_id, request=req))
    options = WorkerOptions(worker_id="safety-worker", lease_seconds=30)
    worker = Worker(store, storage, runner, options, Wakeup(), Flag(), Moderation(checks))
    assert worker.run_once()
    worker.lease.close()
    return store.get(job_id)


def stored_images(parts, job: Job) -> list[Image.Image]:
    images = []
    for key in job.result_keys:
        image = Image.open(io.BytesIO(parts[1].get(key)))
        image.load()
        images.append(image)
    return images


def test_worker_blocked_output_is_content_moderated(parts, runner, blocking_images):
    counting = Counting(runner)
    checks = SafetyChecks(image_classifier=blocking_images)
    job = run_job(parts, counting, checks, request(model=runner.name), "job-blocked")
    assert counting.calls == 1
    assert job.status is JobStatus.CONTENT_MODERATED
    assert job.error_code == "content_moderated"
    assert job.error_message
    assert job.progress == 1.0
    (image,) = stored_images(parts, job)
    assert image.format == "PNG"
    assert image.size == (SIZE, SIZE)
    assert is_black(image)
    assert job.report.blocked_outputs == [0]
    (verdict,) = job.report.verdicts
    assert verdict["point"] == "output:0"
    assert verdict["allowed"] is False
    assert verdict["category"] == "nsfw"
    assert verdict["checker"] == "tiny-checker"
    assert verdict["tolerance"] == 2
    assert verdict["score"] > 0.99


def test_worker_prompt_refused_by_classifier_generates_nothing(
    parts, runner, blocking_prompts, allowing_images
):
    counting = Counting(runner)
    checks = SafetyChecks(prompt_classifier=blocking_prompts, image_classifier=allowing_images)
    job = run_job(parts, counting, checks, request(model=runner.name), "job-refused")
    assert counting.calls == 0
    assert job.status is JobStatus.REQUEST_MODERATED
    assert job.error_code == "request_moderated"
    assert job.error_message == refusal_message("unsafe")
    assert job.result_keys == []
    assert not [p for p in parts[1].root.rglob("*") if p.is_file()]
    (verdict,) = job.report.verdicts
    assert verdict["point"] == "prompt"
    assert verdict["allowed"] is False
    assert verdict["checker"] == "tiny-prompt-classifier"


def test_worker_allowed_output_succeeds_with_verdicts(parts, runner, allowing_images):
    checks = SafetyChecks(image_classifier=allowing_images)
    job = run_job(parts, runner, checks, request(model=runner.name), "job-ok")
    assert job.status is JobStatus.SUCCEEDED
    assert job.error_code is None
    (image,) = stored_images(parts, job)
    assert not is_black(image)
    assert job.report.blocked_outputs == []
    assert [(v["point"], v["allowed"]) for v in job.report.verdicts] == [("output:0", True)]


def test_worker_batch_with_one_blocked_output_succeeds(parts, runner, tmp_path):
    """The straddle: the threshold is moved between the two images' scores, so exactly one
    of a batch of two is blocked, deterministically."""
    threshold = logit(0.85)  # tolerance 2; p = sigmoid(logit_nsfw - logit_normal)
    directory = make_image_checker(tmp_path / "straddle", unsafe_bias=0.0)  # p ~ 0.46: allows
    for seed in range(1, 11):
        req = request(model=runner.name, seed=seed, num_images=2)
        first = run_job(
            parts, runner, SafetyChecks(image_classifier=image_classifier(directory)),
            req, f"job-probe-{seed}",
        )  # fmt: skip
        assert first.status is JobStatus.SUCCEEDED
        assert first.report.blocked_outputs == []
        scorer = image_classifier(directory)
        logits = [logit(scorer.score(image)[0]) for image in stored_images(parts, first)]
        if abs(logits[0] - logits[1]) > 0.006:  # far enough apart for float32
            break
    else:
        pytest.fail(f"no seed in 1..10 gave two outputs with distinct scores: {logits}")
    # Move the nsfw logit so the threshold lies halfway between the two images.
    shift_unsafe_bias(directory, threshold - (logits[0] + logits[1]) / 2)
    blocked = max(range(2), key=lambda i: logits[i])
    kept = 1 - blocked
    checker = image_classifier(directory)
    job = run_job(parts, runner, SafetyChecks(image_classifier=checker), req, "job-straddle")
    assert job.status is JobStatus.SUCCEEDED
    assert job.error_code is None
    assert job.report.blocked_outputs == [blocked]
    images = stored_images(parts, job)
    assert len(images) == 2
    assert is_black(images[blocked])
    assert not is_black(images[kept])
    # The image that passed is byte-for-byte the one the probe run stored.
    probe = parts[1].get(first.result_keys[kept])
    assert parts[1].get(job.result_keys[kept]) == probe
    verdicts = {v["point"]: v for v in job.report.verdicts}
    assert verdicts[f"output:{blocked}"]["allowed"] is False
    assert verdicts[f"output:{blocked}"]["score"] >= 0.85
    assert verdicts[f"output:{kept}"]["allowed"] is True
    assert verdicts[f"output:{kept}"]["score"] < 0.85


# -- 7. verdicts through the store --------------------------------------------------------


def test_report_round_trips_through_sqlite(parts):
    store, _ = parts
    verdict = Verdict(False, "nsfw", 0.912345678, "tiny-checker", tolerance=2).at("output:1")
    report = JobReport(
        verdicts=[verdict.to_dict()],
        prompt="a rewritten prompt",
        notes=["safety_tolerance 6 was lowered to 2, the most permissive this server allows"],
        blocked_outputs=[1],
    )
    created = store.create(Job(id="job-r", request=request(), report=report))
    assert store.get("job-r").report == report
    claimed = store.claim("w", ["tiny"], 30)
    assert claimed.id == created.id
    assert claimed.report == report
    later = JobReport(verdicts=[*report.verdicts, {"point": "output:0", "allowed": True}])
    later.blocked_outputs = [1]
    assert store.complete("job-r", claimed.attempt, ["k0", "k1"], later)
    ended = store.get("job-r")
    assert ended.status is JobStatus.SUCCEEDED
    assert ended.report == later
    assert ended.report.verdicts[0]["score"] == 0.9123  # to_dict rounds the score
    assert ended.report.verdicts[0]["point"] == "output:1"


def test_moderated_report_round_trips_through_sqlite(parts):
    store, _ = parts
    store.create(Job(id="job-q", request=request()))
    claimed = store.claim("w", ["tiny"], 30)
    verdict = Verdict(False, "unsafe", 0.99, "tiny-prompt-classifier", "prompt", 2)
    report = JobReport(verdicts=[verdict.to_dict()])
    assert store.moderate("job-q", claimed.attempt, report, "refused")
    ended = store.get("job-q")
    assert ended.status is JobStatus.REQUEST_MODERATED
    assert ended.error_message == "refused"
    assert ended.result_keys == []
    assert ended.report == report
    assert Verdict(**ended.report.verdicts[0]) == verdict


@pytest.mark.parametrize(
    "prompt",
    ["a child,\nnude", "ｌｏｌｉｃｏｎ", "l\u200bolicon", "lo\u00adlicon", "a  child\tnaked"],
)
def test_the_default_list_sees_through_newlines_and_look_alikes(prompt):
    verdict = TermList.default().check(prompt)
    assert not verdict.allowed, prompt
