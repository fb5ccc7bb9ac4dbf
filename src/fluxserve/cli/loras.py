"""``fluxserve loras``: the LoRA registry (BFL's finetunes) in the job store."""

from __future__ import annotations

import argparse
import datetime
import sys

from fluxserve.config import Settings


def add_loras_parser(commands: argparse._SubParsersAction, settings_flags) -> None:
    loras = commands.add_parser(
        "loras", help="Register LoRAs by name (requests and BFL's finetune_id name them)."
    )
    loras_commands = loras.add_subparsers(dest="loras_command", required=True)
    add = loras_commands.add_parser("add", help="Register (or replace) a LoRA under a name.")
    add.add_argument("name", help="The name requests use (BFL: finetune_id).")
    add.add_argument(
        "source",
        help="A Hugging Face repo id (owner/name[:file.safetensors]), an http(s) URL, or a "
        ".safetensors file in --lora-dir.",
    )
    add.add_argument("--scale", type=float, default=1.0, help="Its default scale (1).")
    loras_commands.add_parser("list", help="List the registered LoRAs.")
    remove = loras_commands.add_parser("remove", help="Remove a registered LoRA.")
    remove.add_argument("name")
    for command in loras_commands.choices.values():
        settings_flags(command, "data_dir", "database", "lora_dir", "allow_lora_urls",
                       "allow_hub_loras", "allow_private_urls")  # fmt: skip


def loras_command(settings: Settings, args: argparse.Namespace) -> int:
    from fluxserve.bootstrap import lora_policy
    from fluxserve.errors import InvalidRequest
    from fluxserve.jobs.loras import LoraRequests
    from fluxserve.store.loras import LoraRegistry
    from fluxserve.store.opening import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    try:
        requests = LoraRequests(LoraRegistry(store.engine), lora_policy(settings))
        if args.loras_command == "add":
            try:
                entry = requests.register(args.name, args.source, args.scale)
            except InvalidRequest as exc:
                print(f"fluxserve: {exc.message}", file=sys.stderr)
                return 2
            print(f"registered {entry.name}: {entry.source} at scale {entry.scale:g}")
            return 0
        if args.loras_command == "list":
            for entry in requests.registry.all():
                added = datetime.datetime.fromtimestamp(entry.created_at).isoformat(
                    timespec="seconds"
                )
                print(f"{entry.name}  {entry.source}  scale {entry.scale:g}  added {added}")
            return 0
        if not requests.registry.remove(args.name):
            print(f"fluxserve: no LoRA is registered as {args.name!r}", file=sys.stderr)
            return 1
        print(f"removed {args.name}")
        return 0
    finally:
        store.close()
