"""``transferkit cache``: what the cache folder holds, and clearing it."""

from __future__ import annotations

import argparse
import datetime as dt
import json


def add_cache(sub) -> None:
    p = sub.add_parser("cache", help="disk used by the cache (features, copies, ...); clear it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    c = actions.add_parser("clear", help="remove parts of the cache (all when no --part)")
    c.add_argument(
        "--part",
        action="append",
        metavar="PART",
        help="features, copies, scan or arrays (repeatable; default: all)",
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    from .cache_usage import cache_usage, clear_cache, human_bytes
    from .data.cache import cache_root

    if args.action == "clear":
        result = clear_cache(args.part)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        for r in result["removed"]:
            print(f"removed {r['part']}: {r['files']:,} files, {human_bytes(r['bytes'])}")
        if not result["removed"] and not result["busy"]:
            print(f"nothing to remove under {result['folder']}")
        for part in result["busy"]:
            print(f"left {part} alone: a fit is writing to it (try again when it ends)")
        return 0
    usage = cache_usage()
    if args.json:
        print(json.dumps([u.to_dict() for u in usage], indent=2))
        return 0
    _print_usage(usage, human_bytes, cache_root())
    return 0


def _print_usage(usage, human_bytes, root) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"transferkit cache: {root}")
    for name in ("part", "files", "size", "newest", "what it is"):
        table.add_column(name, justify="right" if name in ("files", "size") else "left")
    for u in usage:
        newest = dt.datetime.fromtimestamp(u.newest).strftime("%Y-%m-%d %H:%M") if u.newest else "-"
        table.add_row(u.part, f"{u.files:,}", human_bytes(u.bytes), newest, u.about)
    total = sum(u.bytes for u in usage)
    table.caption = (
        f"{human_bytes(total)} in all; everything here is recomputed when missing. "
        "Free it with: transferkit cache clear [--part PART]"
    )
    Console().print(table)
