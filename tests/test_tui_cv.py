"""The TUI of a cross-validation: the picker's row of the parent (folds finished, the monitor's
mean ± std) and the fold screen (each fold's state and metrics, the aggregate), as SVG snapshots
of real parent and fold directories (trainer.run.cv), and Enter/Esc between them."""
from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from tui_fakes import wait_for  # noqa: E402
from pilot import async_test  # noqa: E402

from tests.test_cv import fake_fold, tiny_cfg  # noqa: E402
from trainer.run.cv import create_cv  # noqa: E402
from trainer.run.cv_status import cv_row  # noqa: E402
from tui import fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from tui.screens.cv import CvScreen  # noqa: E402
from tui.screens.picker import PickerScreen  # noqa: E402


def made_cv(root: Path) -> Path:
    """ROOT/speech-cv with three folds: two finished, one failed."""
    parent, folds = create_cv(root, "speech-cv", tiny_cfg(root), 3, "speech.yaml")
    fake_fold(folds[0], "finished", 0.80, 0.78)
    fake_fold(folds[1], "failed")
    fake_fold(folds[2], "finished", 0.84, 0.80)
    return parent


def app_of(root: Path, **options) -> LonghaulApp:
    return LonghaulApp(options.pop("run_dir", None), root, clock=fmt.frozen_clock(tui_fakes.T0), **options)


def folds_shown(pilot) -> bool:
    screen = pilot.app.screen
    return isinstance(screen, CvScreen) and screen.info is not None


def test_fold_screen(snap_compare, tmp_path):
    parent = made_cv(tmp_path / "runs")

    async def loaded(pilot):
        await wait_for(pilot, lambda: folds_shown(pilot), what="the folds")

    assert snap_compare(app_of(parent.parent, cv_dir=parent), terminal_size=(100, 24), run_before=loaded)


def test_picker_with_a_cross_validation(snap_compare, tmp_path):
    parent = made_cv(tmp_path / "runs")
    rows = [{**cv_row(parent), "dir": "/runs/speech-cv"}]  # a fixed path: the snapshot must not hold tmp_path

    async def loaded(pilot):
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#runs").row_count == 1, what="the runs")

    app = app_of(Path("/home/me/checkpoints"), lister=lambda root: rows)
    assert snap_compare(app, terminal_size=(120, 12), run_before=loaded)


async def cursor_on_the_cv(pilot) -> PickerScreen:
    """The picker, its cursor on the cross-validation's row."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen) and app.screen.rows, what="the picker")
    picker = app.screen
    cv_dir = next(key for key, info in picker.rows.items() if info.get("kind") == "cv")
    picker.query_one("#runs").move_cursor(row=list(picker.rows).index(cv_dir))
    return picker


@async_test
async def test_enter_opens_the_folds_and_esc_goes_back(tmp_path):
    root = tmp_path / "runs"
    made_cv(root)
    app = app_of(root, picker_interval=60.0)
    async with app.run_test(size=(120, 24)) as pilot:
        await cursor_on_the_cv(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: folds_shown(pilot), what="the fold screen")
        assert app.screen.info["aggregate"]["n"] == 2
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), what="the picker again")


@async_test
async def test_the_fold_screen_has_columns_for_a_monitor_that_is_not_accuracy_or_f1(tmp_path):
    parent, folds = create_cv(tmp_path / "runs", "auc-cv", tiny_cfg(tmp_path, **{"eval.monitor": "val_recall_macro"}),
                              2, "speech.yaml")
    fake_fold(folds[0], "finished", 0.80, 0.78, val={"val_recall_macro": 0.91}, test={"recall_macro": 0.87})
    app = app_of(parent.parent, cv_dir=parent)
    async with app.run_test(size=(140, 24)) as pilot:
        await wait_for(pilot, lambda: folds_shown(pilot), what="the folds")
        table = app.screen.query_one("#folds")
        assert [str(c.label) for c in table.columns.values()][-2:] == ["val recall", "test recall"]
        assert table.get_row(str(folds[0]))[-2:] == ["0.910", "0.870"]


@async_test
async def test_space_refuses_to_mark_a_cross_validation(tmp_path):
    root = tmp_path / "runs"
    made_cv(root)
    app = app_of(root, picker_interval=60.0)
    async with app.run_test(size=(120, 24)) as pilot:
        picker = await cursor_on_the_cv(pilot)
        await pilot.press("space")
        await pilot.pause(0.1)
        assert not picker.marked
        assert any("speech-cv is a cross-validation" in n.message for n in app._notifications)
        picker.query_one("#runs").move_cursor(row=list(picker.rows).index(str(root / "speech-cv-fold1")))
        await pilot.press("space")  # its folds are runs: they mark
        assert list(picker.marked) == [str(root / "speech-cv-fold1")]
