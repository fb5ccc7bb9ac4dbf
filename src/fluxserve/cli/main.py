"""The ``fluxserve`` command: serve, worker, generate, models, bench.

Flags map one to one onto Settings fields; a flag left out falls back to the
FLUXSERVE_<FIELD> environment variable, then to the default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_origin

from pydantic import ValidationError

from fluxserve import __version__
from fluxserve.cli.bench import add_bench_parser  # torch-free
from fluxserve.cli.keys import add_keys_parser
from fluxserve.cli.loras import add_loras_parser
from fluxserve.config import Settings
from fluxserve.errors import FluxserveError
from fluxserve.specs import MODEL_SPECS


def _settings_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the Settings fields ``names`` as flags whose default is 'not given'."""
    fields = Settings.model_fields
    for name in names:
        flag = "--" + name.replace("_", "-")
        help_text = f"{fields[name].description} [env FLUXSERVE_{name.upper()}]"
        if get_origin(fields[name].annotation) is list:  # --model a --model b
            parser.add_argument(flag, action="append", default=None, help=help_text)
        elif fields[name].annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, default=None, help=help_text)


# Settings a worker has no use for: it serves no HTTP.
HTTP_ONLY = {"host", "port", "tls_cert", "tls_key", "public_url", "alias", "worker",
             "price_table", "allowed_hosts", "max_prompt_chars"}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxserve", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fluxserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Run the HTTP server and its GPU workers.")
    _settings_flags(serve, *Settings.model_fields)  # serve takes every setting

    worker = commands.add_parser(
        "worker", help="Run a GPU worker for a cluster (PostgreSQL job store), no HTTP."
    )
    _settings_flags(worker, *(name for name in Settings.model_fields if name not in HTTP_ONLY))

    generate = commands.add_parser("generate", help="Make one image in this process.")
    generate.add_argument("prompt", help="What to draw.")
    generate.add_argument("-o", "--output", required=True, type=Path,
                          help="Image file to write; .png, .jpg/.jpeg or .webp.")  # fmt: skip
    generate.add_argument("--width", type=int, default=1024)
    generate.add_argument("--height", type=int, default=768)
    generate.add_argument("--steps", type=int, default=None, help="Default: the model's.")
    generate.add_argument("--guidance", type=float, default=None, help="Default: the model's.")
    generate.add_argument("--seed", type=int, default=None, help="Default: random.")
    _settings_flags(generate, "model", "data_dir", "device", "metadata_prompt", "log_level")

    models = commands.add_parser("models", help="List known and cached models.")
    _settings_flags(models, "data_dir")
    models_commands = models.add_subparsers(dest="models_command")
    make_tiny = models_commands.add_parser(
        "make-tiny", help="Write the tiny random-weight test model as a diffusers directory."
    )
    make_tiny.add_argument("directory", type=Path)
    make_tiny.add_argument(
        "--variant",
        choices=[spec.name for spec in MODEL_SPECS.values() if spec.builtin],
        default="tiny",
        help="Which structure: FLUX.1 text-to-image (tiny), Kontext editing, Fill, FLUX.2 "
        "[klein] (tiny-flux2) or FLUX.2 [dev] (tiny-flux2-dev).",
    )

    status = commands.add_parser(
        "status", help="Show the queue, the running jobs and the workers, from the job store."
    )
    _settings_flags(status, "data_dir", "database", "lease_seconds")
    status.add_argument("--json", action="store_true", help="Print JSON, for programs.")

    add_bench_parser(commands)
    add_keys_parser(commands, _settings_flags)
    add_loras_parser(commands, _settings_flags)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from fluxserve.cli.serve import serve

            return serve(settings_from(args))
        if args.command == "worker":
            from fluxserve.cli.worker import worker

            return worker(settings_from(args))
        if args.command == "generate":
            from fluxserve.cli.generate import generate

            return generate(settings_from(args), args)
        if args.command == "loras":
            from fluxserve.cli.loras import loras_command

            return loras_command(settings_from(args), args)
        if args.command == "keys":
            from fluxserve.cli.keys import keys_command

            return keys_command(settings_from(args), args)
        if args.command == "status":
            from fluxserve.cli.status import status

            return status(settings_from(args), as_json=args.json)
        if args.command == "bench":
            from fluxserve.cli.bench import bench

            return bench(args)
        from fluxserve.cli.models import models_command

        return models_command(settings_from(args), args)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            where = f"invalid --{field.replace('_', '-')}: " if field else ""
            print(f"fluxserve: {where}{error['msg']}", file=sys.stderr)
        return 2
    except FluxserveError as exc:
        print(f"fluxserve: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
