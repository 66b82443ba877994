"""The layers stay apart and the code stays in pieces a stranger can read.

- The run layer, the protocol, the schedule, the config, the monitor, the history, the daemon
  and the CLI's run commands import, each on its own in a fresh interpreter, without torch,
  timm, torchaudio or textual: a status query or the daemon of a 2-core training box must not pay
  for torch, and the TUI builds on them. TUI modules never import torch (textual is theirs).
- No class over 350 lines and no function over 60 in trainer/ and tui/.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCH = ("torch", "timm", "torchaudio")
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 350, 60


def _modules(package: str) -> list[str]:
    """`package` and every module in it (a module path is its file's dotted path)."""
    folder = ROOT / package.replace(".", "/")
    names = [package] + [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py"))
                         if p.stem not in ("__init__", "__main__")]
    return names


TORCH_FREE = (_modules("trainer.run") + _modules("trainer.history") + _modules("trainer.daemon")
              + ["trainer.protocol", "trainer.schedule", "trainer.config", "trainer.monitor", "trainer.fmt",
                 "trainer.sysmon", "trainer.proctable", "trainer.contention", "trainer.notify", "trainer.watchdog",
                 "trainer.thresholds", "trainer.queue_commands", "trainer.pipelines", "trainer.remote", "trainer.ssh", "trainer.console", "trainer.service", "trainer.cli",
                 "trainer.store_setup",
                 "trainer.model_names",
                 "trainer.setup_stages",
                 "trainer.posthoc", "trainer.posthoc.commands", "trainer.posthoc.after", "trainer.posthoc.calibration",
                 "trainer.posthoc.report", "trainer.posthoc.report_figures", "trainer.posthoc.report_compare",
                 "trainer.data.store", "trainer.data.store.layout", "trainer.data.store.reader",
                 "trainer.data.store.changes", "trainer.data.index",
                 "trainer.data.seeds", "trainer.data.balance", "trainer.data.report", "trainer.data.folds"])
TUI = _modules("tui") + _modules("tui.screens") + _modules("tui.widgets")


def _heavy_imports(module: str, heavy: tuple[str, ...]) -> subprocess.CompletedProcess:
    code = (f"import sys, {module}; "
            f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})); "
            "print(bad); sys.exit(1 if bad else 0)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_module_imports_neither_torch_nor_textual(module):
    out = _heavy_imports(module, TORCH + ("textual",))
    assert out.returncode == 0, f"{module} imports {out.stdout.strip()} {out.stderr[-800:]}"


def test_user_error_types_imports_nothing():
    """`longhaul ls` must not pay for the data layer because trainer.data's package was imported."""
    code = ("import sys, trainer.cli, trainer.data; before = set(sys.modules); types = trainer.cli.user_error_types(); "
            "print(sorted(set(sys.modules) - before)); from trainer.data.report import DataError; "
            "assert DataError not in types and DataError in trainer.cli.user_error_types()")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-800:]


@pytest.mark.parametrize("module", TUI)
def test_tui_module_never_imports_torch(module):
    out = _heavy_imports(module, TORCH)
    assert out.returncode == 0, f"{module} imports {out.stdout.strip()} {out.stderr[-800:]}"


def test_no_class_or_function_is_too_long():
    too_long = []
    for path in sorted(p for top in ("trainer", "tui") for p in (ROOT / top).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines > {limit}")
    assert not too_long, "\n".join(too_long)
