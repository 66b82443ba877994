"""The after-the-run commands of `longhaul`: evaluate, predict, export-model, report.

Torch-free: only the argument parsers live here (`longhaul ls` must not pay for torch); each
command's work is imported when it runs, from the module named for it (its `main(args, run_dir)`).
"""
from __future__ import annotations

import importlib

SPLITS = ("test", "val")
WEIGHTS = ("best", "last")
FORMATS = ("onnx", "torchscript")


def register(sub, run_cmd) -> None:
    """Add the four commands to `sub` (argparse subparsers); `run_cmd(name, func, help)` makes a
    subparser that takes a RUN argument (trainer.cli's)."""
    p = run_cmd("evaluate", _runner("evaluate"), "evaluate a run on its test split (or another) with calibration")
    p.add_argument("--split", choices=SPLITS, default="test", help="which split of the run's data (default: test)")
    p.add_argument("--data", metavar="PATH", help="another data folder laid out like the training data")
    p.add_argument("--weights", choices=WEIGHTS, default="best")
    p.add_argument("--tta", action="store_true", help="also evaluate with test-time augmentation, side by side")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = run_cmd("predict", _runner("predict"), "classify files or folders with a run's model")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders searched recursively")
    p.add_argument("--weights", choices=WEIGHTS, default="best")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="probabilities shown per file (default 3)")
    p.add_argument("--tta", action="store_true", help="average over the run's test-time augmentations")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = run_cmd("export-model", _runner("export"), "export a run's model with its preprocessing, checked for parity")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--weights", choices=WEIGHTS, default="best")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/export-FORMAT)")
    help_text = "write a run's report, or a comparison of runs (--compare): one self-contained HTML file"
    p = sub.add_parser("report", help=help_text, description=help_text)
    p.add_argument("run", nargs="?", help="run name or run directory")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="compare RUN (if given) and these runs on one page")
    p.add_argument("--out", metavar="FILE", help="output file (default: RUN/report.html; with --compare "
                   "./compare-NAMES.html)")
    p.set_defaults(func=_report(p))


def _runner(module: str):
    def run(args) -> int:
        from trainer.cli import runs_root_arg
        from trainer.run.locate import resolve_run

        run_dir = resolve_run(args.run, runs_root_arg(args))
        return importlib.import_module(f"trainer.posthoc.{module}").main(args, run_dir)
    return run


def _report(parser):
    """`report RUN` writes the run's report; `report [RUN] --compare RUN...` the comparison page."""
    def run(args) -> int:
        if not args.compare:
            if args.run is None:
                parser.error("give a RUN, or --compare RUN RUN...")
            return _runner("report")(args)
        from trainer.cli import runs_root_arg
        from trainer.run.locate import resolve_run

        names = ([args.run] if args.run else []) + args.compare
        run_dirs = [resolve_run(name, runs_root_arg(args)) for name in names]
        return importlib.import_module("trainer.posthoc.report_compare").main(args, run_dirs)
    return run
