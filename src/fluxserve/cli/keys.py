"""``fluxserve keys``: create, list and revoke API keys in the job store."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from fluxserve.config import Settings
from fluxserve.jobs.access import DEFAULT_MAX_ACTIVE


def add_keys_parser(commands: argparse._SubParsersAction, settings_flags) -> None:
    keys = commands.add_parser(
        "keys", help="Create, list and revoke API keys (stored in --data-dir or --database)."
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser(
        "create", help="Make a key; prints the secret alone on stdout (it is not kept)."
    )
    create.add_argument("--name", required=True, help="Who or what the key is for.")
    create.add_argument(
        "--max-active",
        type=int,
        default=DEFAULT_MAX_ACTIVE,
        help=f"Queued + running jobs the key may have at once (default {DEFAULT_MAX_ACTIVE}, "
        "as BFL).",
    )
    create.add_argument(
        "--rate", type=float, default=None, help="Submits per minute (default: unlimited)."
    )
    create.add_argument(
        "--credits",
        type=float,
        default=None,
        help="A budget in credits, spent at --price-table's prices; a submit that would "
        "overdraw it gets 402 (default: unlimited).",
    )
    listing = keys_commands.add_parser("list", help="List keys (never their secrets).")
    listing.add_argument("--json", action="store_true", help="One JSON object per key.")
    revoke = keys_commands.add_parser("revoke", help="Revoke a key by its id or name.")
    revoke.add_argument("key", help="The key's id (key_...) or name.")
    for command in (create, listing, revoke):
        settings_flags(command, "data_dir", "database")


def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    from fluxserve.jobs.access import KeyRing
    from fluxserve.store.keys import KeyStore
    from fluxserve.store.opening import open_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    try:
        ring = KeyRing(KeyStore(store.engine))
        if args.keys_command == "create":
            try:
                key, secret = ring.create(args.name, args.max_active, args.rate, args.credits)
            except ValueError as exc:
                print(f"fluxserve: {exc}", file=sys.stderr)
                return 2
            print(secret)  # alone on stdout: KEY=$(fluxserve keys create --name ci)
            print(f"created {key.id} ({key.name}); the secret above is shown only once",
                  file=sys.stderr)  # fmt: skip
            return 0
        if args.keys_command == "list":
            for key in ring.all():
                print(json.dumps(key.__dict__) if args.json else _describe(key))
            return 0
        revoked = ring.revoke(args.key)
        if not revoked:
            print(f"fluxserve: no live key has the id or name {args.key!r}", file=sys.stderr)
            return 1
        for key in revoked:
            print(f"revoked {key.id} ({key.name})")
        return 0
    finally:
        store.close()


def _describe(key) -> str:
    created = datetime.datetime.fromtimestamp(key.created_at).isoformat(timespec="seconds")
    state = "revoked" if key.revoked_at else "live"
    rate = f"{key.rate_per_minute:g}/min" if key.rate_per_minute else "no rate limit"
    budget = (
        "no budget" if key.credits is None else f"{key.remaining:g} of {key.credits:g} credits left"
    )
    return (
        f"{key.id}  {key.name}  {key.prefix}…  {state}  max active {key.max_active}, "
        f"{rate}, {budget}, created {created}"
    )
