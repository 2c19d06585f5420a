"""Command line: `python -m harness …` or `harness …`.

    harness run CONFIG [key=value …] [--executor ray|inprocess] [--workers N] [--address ADDR]
    harness status RUN_DIR
    harness methods | suites | models
    harness metrics RUN_DIR
    harness report RUN_DIR
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import HarnessError

# Offline by default: hub ids resolve from the local cache or fail fast with a clear message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import load_run_config
    from harness.report import write_leaderboard
    from harness.runner import execute, plan

    overrides = list(args.overrides)
    if args.executor:
        overrides.append(f"executor.kind={args.executor}")
    if args.workers:
        overrides.append(f"executor.num_workers={args.workers}")
    if args.address:
        overrides.append(f"executor.address={args.address}")
    config = load_run_config(args.config, overrides)
    p = plan(config)
    print(f"[harness] run {config.run_id}: {p.num_units} units in {len(p.batches)} batches, "
          f"{len(p.prepares)} prepare job(s) -> {config.run_dir}", flush=True)
    summary = execute(p, progress=not args.no_progress)
    board = write_leaderboard(summary.run_dir)
    print(f"[harness] {summary.done}/{summary.units} units done, {summary.failed} failed "
          f"({summary.skipped_batches} batches already done; executor: {summary.executor})")
    print(f"[harness] leaderboard: {board}")
    return 0 if summary.failed == 0 else 1


def cmd_status(args: argparse.Namespace) -> int:
    import yaml

    from harness.config import run_config_from_dict
    from harness.runner import plan
    from harness.store import RunStore

    store = RunStore(Path(args.run_dir))
    if not store.exists():
        raise HarnessError(f"{args.run_dir} is not a run directory (no config.yaml)")
    config = run_config_from_dict(yaml.safe_load(store.config_path.read_text()))
    p = plan(config)
    rows = store.read_rows()
    done = int((rows["status"] == "done").sum()) if len(rows) else 0
    print(f"run {store.root.name}: {len(rows)}/{p.num_units} units recorded ({done} done, {len(rows) - done} failed), "
          f"{len(store.done_batches())}/{len(p.batches)} batches")
    if len(rows):
        print(rows.groupby(["method", "status"]).size().to_string())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.command == "methods":
        from methods.base import discover_methods

        registry = discover_methods()
        for name in registry.names():
            cls = registry.get(name)
            doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
            print(f"{name:20s} v{cls.version}  families={','.join(cls.families):24s} {doc}")
    elif args.command == "suites":
        from harness.suites import list_suites, load_suite

        for name in list_suites():
            suite = load_suite(name)
            print(f"{name:20s} v{suite.version}  {len(suite.items)} items  {suite.description}")
    else:
        from harness.models import model_catalog

        for name, spec in model_catalog().items():
            print(f"{name:20s} {spec.family:14s} {spec.pretrained or 'factory:' + spec.factory:45s} {spec.description}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    raise HarnessError("`harness metrics` is not implemented yet (issue 4: metrics stage)")


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_leaderboard

    path = write_leaderboard(args.run_dir)
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Latent-space image-editing benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a method x suite x seed grid")
    run.add_argument("config", help="run config YAML, e.g. configs/quickstart.yaml")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sampler.num_steps=20")
    run.add_argument("--executor", choices=["ray", "inprocess"])
    run.add_argument("--workers", type=int, help="number of workers (default: one per GPU, else per CPU)")
    run.add_argument("--address", help="join an existing Ray cluster")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="progress of a run")
    status.add_argument("run_dir")
    status.set_defaults(func=cmd_status)
    for name in ("methods", "suites", "models"):
        sub.add_parser(name, help=f"list registered {name}").set_defaults(func=cmd_list)
    metrics = sub.add_parser("metrics", help="compute metrics of a run")
    metrics.add_argument("run_dir")
    metrics.set_defaults(func=cmd_metrics)
    report = sub.add_parser("report", help="leaderboard of a run")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after flags: collect stray key=value words for `run`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "run" or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
