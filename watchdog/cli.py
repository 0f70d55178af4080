"""The `odoo-watchdog` command (DESIGN.md section 10)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from watchdog import __version__
from watchdog.config import ConfigError, LoadedConfig, load


def _check(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        loaded = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(f"FAILED: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(_summary(loaded))
    return 0


def _summary(loaded: LoadedConfig) -> str:
    cfg = loaded.config
    lines = [f"SUCCESS: {loaded.path} is valid"]
    for name, site in cfg.sites.items():
        colors = ", ".join(f"{c} ({spec.server} {spec.url})" for c, spec in site.colors.items())
        steps = " -> ".join(
            "pause" if isinstance(s, str) else str(s.weight) for s in site.rollout.effective_steps
        )
        lines.append(
            f"  site {name}: {site.router.kind} router, live {site.live}, {colors}; "
            f"{site.rollout.strategy} {steps}; {len(loaded.rules_for(name))} rules"
        )
    by_source = Counter(rule.source for rule in loaded.rules)
    sources = ", ".join(f"{kind} {count}" for kind, count in sorted(by_source.items())) or "none"
    files = len(loaded.rule_files)
    lines.append(
        f"  {len(loaded.rules)} rules from {files} file{'s' if files != 1 else ''}: {sources}"
    )
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from watchdog.lab.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odoo-watchdog",
        description="Blue-green and canary rollouts of Odoo with automatic rollback.",
    )
    parser.add_argument("--version", action="version", version=f"odoo-watchdog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = sub.add_parser("check", help="validate the config and every rule file it names")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="daemon config")
    check.set_defaults(func=_check)

    demo = sub.add_parser("demo", help="run the lab demo on loopback")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
