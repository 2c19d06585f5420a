"""Command line: `python -m harness …` or `harness …`.

    harness run CONFIG [key=value …] [--executor ray|inprocess] [--workers N] [--address ADDR]
                [--retry-failed] [--accept-code-change]
    harness status RUN_DIR
    harness methods | suites | models
    harness metrics RUN_DIR
    harness verify RUN_DIR [--sample N] [--seed S]
    harness report RUN… [--format md|tex|csv|parquet|html] [--sort METRIC] [--out PATH]
    harness leaderboard RUN… [--format md|tex|csv|parquet] [--sort METRIC] [--out PATH]
    harness paper-tables RUN [--table svd|hspace] [--format md|tex] [--strength S] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.log import get_logger

# Offline by default: hub ids resolve from the local cache or fail fast with a clear message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = get_logger()


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import load_run_config
    from harness.reports import write_leaderboard
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
    log.info("run %s: %d units in %d batches, %d prepare job(s) -> %s", config.run_id, p.num_units, len(p.batches),
             len(p.prepares), config.run_dir)
    summary = execute(p, progress=not args.no_progress, retry_failed=args.retry_failed,
                      accept_code_change=args.accept_code_change)
    if summary.metrics_path:
        log.info("metrics: %s", summary.metrics_path)
    board = write_leaderboard(summary.run_dir)
    retried = f", {summary.retried} failed unit(s) retried" if args.retry_failed else ""
    log.info("%d/%d units done, %d failed (%d batches already done%s; executor: %s)", summary.done, summary.units,
             summary.failed, summary.skipped_batches, retried, summary.executor)
    log.info("leaderboard: %s", board)
    if summary.failed:
        log.warning("%d unit(s) failed: reasons in `harness status %s`; `harness run %s --retry-failed` redoes them",
                    summary.failed, summary.run_dir, args.config)
    return 0 if summary.failed == 0 else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Progress of a run, read-only: it never changes the run directory."""
    from dataclasses import replace

    from harness.runner import plan
    from harness.store import RunStore

    store = RunStore(Path(args.run_dir))
    config = store.run_config()
    p = plan(replace(config, metrics={}))  # the grid only: no metric model is loaded to say how far a run is
    rows = store.read_rows()
    done = int((rows["status"] == "done").sum()) if len(rows) else 0
    print(f"run {store.root.name}: {len(rows)}/{p.num_units} units recorded ({done} done, {len(rows) - done} failed), "
          f"{len(store.done_batches())}/{len(p.batches)} batches")
    if len(rows):
        print(rows.groupby(["method", "status"]).size().to_string())
    failed = rows[rows["status"] != "done"]
    if len(failed):
        print(f"failed units by reason ({len(failed)}):")
        reasons = failed.assign(reason=failed["error"].fillna("no reason recorded").map(_one_line))
        for (method, reason), n in reasons.groupby(["method", "reason"]).size().sort_values(ascending=False).items():
            print(f"  {n:4d}  {method}: {reason}")
        print("  `harness run CONFIG --retry-failed` redoes exactly these units")
    corrupt = store.corrupt_shards()
    if corrupt:
        print(f"{len(corrupt)} unreadable shard(s) ({', '.join(p.name for p in corrupt)}): their batches count as "
              f"not done; the next `harness run` sets them aside and redoes them")
    return 0


def _one_line(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_list(args: argparse.Namespace) -> int:
    if args.command == "methods":
        from harness.method_api import discover_methods

        registry = discover_methods()
        for name in registry.names():
            cls = registry.get(name)
            # a plug-in module may have no docstring: list it all the same
            doc = ((sys.modules[cls.__module__].__doc__ or "").strip().splitlines() or [""])[0]
            print(f"{name:20s} v{cls.version}  families={','.join(cls.families):24s} {doc}")
    elif args.command == "suites":
        from harness.suites import list_suites, load_suite

        for name in list_suites():
            suite = load_suite(name)
            print(f"{name:20s} v{suite.version}  {len(suite.items)} items  {suite.description}")
    else:
        from harness.models import model_catalog

        for name, spec in model_catalog().items():
            source = spec.pretrained or f"factory:{spec.factory}"
            print(f"{name:20s} {spec.family:14s} {source:45s} {spec.description}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Metrics of a stored run, with its saved metrics settings changed by `metrics.x=y` overrides."""
    from harness.config import apply_overrides
    from harness.evaluation import preflight, run_metrics
    from harness.reports import write_leaderboard
    from harness.store import RunInUseError, RunStore

    store = RunStore(Path(args.run_dir))
    store.read_config()  # a run directory, with a readable config
    bad = [o for o in args.overrides if not o.startswith("metrics.")]
    if bad:
        raise HarnessError(f"only metrics.* overrides apply to `harness metrics`, got {bad[0]!r}")
    # Saved by `harness run` before any work (and rewritten by each metrics stage with what it used).
    saved = store.root / "metrics" / "config.yaml"
    raw = {"metrics": store.read_mapping(saved) if saved.is_file() else {}}
    metrics_raw = apply_overrides(raw, list(args.overrides)).get("metrics") or {}
    preflight(metrics_raw)
    try:
        with store.lock():
            log.info("metrics: %s", run_metrics(store.root, metrics_raw))
    except RunInUseError as exc:
        raise HarnessError(f"run {store.root.name!r} is still running ({exc.owner}); its own metrics stage runs when "
                           f"generation ends. Run `harness metrics {args.run_dir}` after it has finished") from None
    log.info("leaderboard: %s", write_leaderboard(store.root))
    return 0


def _emit(text: str | bytes, out: str | None) -> None:
    if out is None:
        print(text, end="" if str(text).endswith("\n") else "\n")
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(text if isinstance(text, bytes) else text.encode())
    print(f"[harness] wrote {out}")


def _table_output(runs: list, fmt: str, sort: str | None, out: str | None, default_parquet: Path | None) -> None:
    import io

    from harness.reports import build_leaderboard, render_leaderboard, runs_title

    board = build_leaderboard(runs, sort)
    if fmt == "parquet":
        target = out or default_parquet
        if target is None:
            raise HarnessError("--format parquet over several runs needs --out PATH")
        buf = io.BytesIO()
        board.to_frame().to_parquet(buf, index=False)
        _emit(buf.getvalue(), str(target))
        return
    _emit(render_leaderboard(board, fmt, runs_title(runs) if fmt != "csv" else ""), out)


def cmd_report(args: argparse.Namespace) -> int:
    """Leaderboard of runs; with one run and md (the default) also results/<run>/leaderboard.md; html per run."""
    from harness.reports import load_runs, write_leaderboard
    from harness.reports.html import write_html_report

    runs = load_runs(args.run_dirs)
    if args.format == "html":
        if args.out:
            raise HarnessError("--format html writes results/<run>/report.html (its images are linked relative "
                               "to the run directory); leave out --out")
        for run in runs:
            print(f"[harness] report: {write_html_report(run.root, args.sort, args.max_samples)}")
        return 0
    if args.format == "md" and len(runs) == 1 and not args.out:
        print(write_leaderboard(runs[0].root, args.sort).read_text(), end="")
        return 0
    default = runs[0].root / "leaderboard.parquet" if len(runs) == 1 else None
    _table_output(runs, args.format, args.sort, args.out, default)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """One table over any set of runs, printed (or --out); writes nothing into the runs."""
    from harness.reports import load_runs

    if args.format == "parquet" and not args.out:
        raise HarnessError("--format parquet needs --out PATH")
    _table_output(load_runs(args.run_dirs), args.format, args.sort, args.out, None)
    return 0


def cmd_paper_tables(args: argparse.Namespace) -> int:
    from harness.reports import load_run
    from harness.reports.paper_tables import TABLES, paper_tables, render_paper_tables

    tables = paper_tables(load_run(args.run_dir), [args.table] if args.table else TABLES, args.strength,
                          label=args.label)
    _emit(render_paper_tables(tables, args.format), args.out)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.verify import verify_run

    report = verify_run(args.run_dir, args.sample, args.seed)
    print(f"[harness] verify: {len(report.batches)} batch(es) drawn at random with --seed {report.seed}")
    print(f"[harness] verify: {report.identical}/{report.checked} images byte-identical on re-generation")
    for item in report.differing:
        print(f"[harness]   differs: {item}")
    return 0 if report.ok else 1


def cmd_world(args: argparse.Namespace) -> int:
    """`harness world check [options]`: the embedded world's figures (python -m harness.world.check)."""
    from harness.world.check import main as check_main

    check_main(list(args.world_args))
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
    run.add_argument("--retry-failed", action="store_true",
                     help="also redo the failed units of finished batches (their batch-mates stay as they are)")
    run.add_argument("--accept-code-change", action="store_true",
                     help="continue a run whose methods' code changed since it started (recorded in manifest.json)")
    run.add_argument("-v", "--verbose", action="store_true", help="also the workers' retry tracebacks")
    run.set_defaults(func=cmd_run)
    status = sub.add_parser("status", help="progress of a run")
    status.add_argument("run_dir")
    status.set_defaults(func=cmd_status)
    for name in ("methods", "suites", "models"):
        sub.add_parser(name, help=f"list registered {name}").set_defaults(func=cmd_list)
    verify = sub.add_parser("verify", help="re-generate a sample of a run's batches and compare PNG bytes")
    verify.add_argument("run_dir")
    verify.add_argument("--sample", type=int, default=4, help="batches to re-generate (drawn at random)")
    verify.add_argument("--seed", type=int, help="seed of the draw (printed; pass it to check the same batches)")
    verify.set_defaults(func=cmd_verify)
    world = sub.add_parser("world", help="the embedded world: `harness world check` prints its figures")
    world.add_argument("action", choices=["check"])
    world.add_argument("world_args", nargs=argparse.REMAINDER, help="options of python -m harness.world.check")
    world.set_defaults(func=cmd_world)
    metrics = sub.add_parser("metrics", help="compute metrics of a run")
    metrics.add_argument("run_dir")
    metrics.add_argument("overrides", nargs="*", help="metrics.* overrides, e.g. metrics.fid.backbone=random-test")
    metrics.set_defaults(func=cmd_metrics)
    for name, text in (("report", "leaderboard of runs (md/tex/csv/parquet) or a run's static HTML report"),
                       ("leaderboard", "one leaderboard over any set of runs (writes nothing into them)")):
        board = sub.add_parser(name, help=text)
        board.add_argument("run_dirs", nargs="+", metavar="RUN")
        formats = ["md", "tex", "csv", "parquet"] + (["html"] if name == "report" else [])
        board.add_argument("--format", choices=formats, default="md")
        board.add_argument("--sort", help="order rows by this metric or column, best first (e.g. lpips, fid)")
        board.add_argument("--out", help="write to this file instead of stdout")
        if name == "report":
            board.add_argument("--max-samples", type=int, default=8, help="html: samples per image grid")
        board.set_defaults(func=cmd_report if name == "report" else cmd_leaderboard)
    paper = sub.add_parser("paper-tables", help="the SVD paper's Table 1 and the h-space paper's Table I beside "
                                                "the published numbers")
    paper.add_argument("run_dir")
    paper.add_argument("--table", choices=["svd", "hspace"], help="only this table (default: both)")
    paper.add_argument("--format", choices=["md", "tex"], default="md")
    paper.add_argument("--strength", type=float, help="edit strength to report when a method has several")
    paper.add_argument("--label", help="h-space table: the label of the original directions (default: the method's "
                                       "name); compared with the label that differs from it only in disentangle_from")
    paper.add_argument("--out", help="write to this file instead of stdout")
    paper.set_defaults(func=cmd_paper_tables)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after flags: collect stray key=value words for `run`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "world":
            args.world_args = list(args.world_args) + extra
            extra = []
    if extra:
        if args.command not in ("run", "metrics") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    from harness.log import setup

    setup(verbose=getattr(args, "verbose", False))
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
