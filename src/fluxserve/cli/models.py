"""``fluxserve models``: the registry and what is cached here; ``make-tiny``."""

from __future__ import annotations

import argparse

from fluxserve.config import Settings
from fluxserve.errors import InvalidRequest
from fluxserve.specs import MODEL_SPECS
from fluxserve.specs import TINY_MARKER as MARKER


def cached_repos() -> set[str]:
    from huggingface_hub import scan_cache_dir

    try:
        return {repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model"}
    except Exception:  # no cache directory yet, or an unreadable one: nothing cached
        return set()


def list_models(settings: Settings) -> None:
    cached = cached_repos()
    print(f"{'NAME':<20} {'SOURCE':<39} {'STEPS':<6} {'CACHED':<7} {'LICENCE':<27} DESCRIPTION")
    for spec in MODEL_SPECS.values():
        if spec.builtin:
            here = (settings.models_dir / spec.name / "model_index.json").exists()
        else:
            here = spec.source in cached
        steps = f"{spec.default_steps}/{spec.max_steps}"
        licence = spec.licence.split(" (")[0]  # the gating advice is in the README
        print(
            f"{spec.name:<20} {spec.source:<39} {steps:<6} {'yes' if here else 'no':<7} "
            f"{licence:<27} {spec.description}"
        )
    others = sorted(cached - {s.source for s in MODEL_SPECS.values()})
    if others:
        print("\nOther cached Hugging Face repos (pass one to --model):")
        for repo in others:
            print(f"  {repo}")


def models_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.models_command == "make-tiny":
        from fluxserve.logs import configure_logging

        configure_logging("warning")
        directory = args.directory
        if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
            raise InvalidRequest("directory", f"{directory} exists and is not empty")
        from fluxserve.runtime.tiny import make_tiny

        make_tiny(directory, args.variant)
        print(f"wrote the {args.variant} model (random weights, makes noise) to {directory}")
        print(f"serve it with: fluxserve serve --model {directory}")
        return 0
    list_models(settings)
    return 0
