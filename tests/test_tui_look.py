"""The look of the TUI (issue 13): dialog key hints, the generated help, the confusion matrix at
80 columns, the active tab without colour, the footer's Escape."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from pilot import async_test, make_app  # noqa: E402
from tui_fakes import wait_for  # noqa: E402

from tui import fmt  # noqa: E402
from tui.app import LonghaulApp  # noqa: E402
from tui.help import as_binding, binding_keys, help_sections, view_classes  # noqa: E402
from tui.screens.dialogs import ConfirmScreen, HelpScreen, SummaryScreen  # noqa: E402
from tui.screens.picker import PickerScreen  # noqa: E402
from tui.screens.run import RunScreen  # noqa: E402
from tui.widgets.evaluation import confusion_layout  # noqa: E402

LONG_NAMES = ["normal", "benign", "malignant-melanoma-in-situ", "squamous-cell-carcinoma",
              "actinic_keratosis_long", "dermatofibroma", "vascular-lesion", "nevus"]


# ----------------------------------------------------------------------------- stop dialog
@async_test
async def test_stop_dialog_shows_its_key_hints(tmp_path, runtime_dir):
    app = make_app(tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped"))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(ConfirmScreen("Stop run [demo]?", yes_label="Stop"))
        await pilot.pause(0.1)
        labels = [str(button.label) for button in app.screen.query("Button")]
        assert labels == ["Stop [y]", "No [n]"]
        assert "Stop run [demo]?" in str(app.screen.query_one("Static").render())


# ----------------------------------------------------------------------------- help
def all_help_classes() -> list[type]:
    return [LonghaulApp, *(cls for _, cls in view_classes())]


def test_help_lists_every_binding_of_the_app_the_screens_and_the_views():
    pairs = {(line.keys, line.text) for _, section in help_sections(LonghaulApp, RunScreen) for line in section}
    titles = [title for title, _ in view_classes()]
    assert any(t.startswith("Run screen") for t in titles) and any(t.startswith("Detail") for t in titles)
    assert any(t.startswith("Run list") for t in titles)
    for cls in all_help_classes():
        for binding in map(as_binding, cls.__dict__.get("BINDINGS", ())):  # every one, as declared
            text = binding.tooltip or binding.description
            assert text, f"{cls.__name__}: {binding.key} has no description"
            keys = binding_keys(binding)
            assert any(k == keys and text in t for k, t in pairs), \
                f"{cls.__name__}'s {binding.key} ({text}) missing from the help"


def test_help_lists_escape_and_the_picker_keys():
    sections = dict(help_sections(LonghaulApp, RunScreen))
    picker = next(lines for title, lines in sections.items() if title.startswith("Run list"))
    assert {"Enter", "g"} <= {line.keys for line in picker}
    run = next(lines for title, lines in sections.items() if title.startswith("Run screen"))
    assert "Esc" in {line.keys for line in run}


def test_help_opened_over_the_picker_lists_the_picker_first():
    titles = [title for title, _ in help_sections(LonghaulApp, PickerScreen)]
    assert titles[0] == "Everywhere" and titles[1].startswith("Run list")


@async_test
async def test_help_fits_80x24_and_scrolls(tmp_path, runtime_dir):
    app = make_app(tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, what="the run")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help")
        await pilot.pause(0.1)
        texts = list(app.screen.query(".help-text"))
        shown = {str(t.render()) for t in texts}
        for _, lines in help_sections(LonghaulApp, RunScreen):
            assert {line.text for line in lines} <= shown
        # Descriptions start in one column and wrap inside it (never under the keys, never cut).
        assert len({t.region.x for t in texts}) == 1 and all(t.region.right <= 78 for t in texts)
        assert max(t.region.height for t in texts) >= 2, "no long description wrapped at 80 columns"
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen), what="the help to close")


# ----------------------------------------------------------------------------- confusion matrix
def table_width(layout) -> int:
    widths = [max(len(str(getattr(row[i], "plain", row[i]))) for row in [layout.columns, *layout.rows])
              for i in range(len(layout.columns))]
    return sum(w + 2 for w in widths)


def test_confusion_matrix_keeps_names_when_they_fit():
    layout = confusion_layout(tui_fakes.confusion(3), ["tone", "chirp", "noise"], 74)
    assert not layout.numbered and layout.columns == ["true \\ pred", "tone", "chirp", "noise", "recall"]
    assert str(layout.rows[0][0]) == "tone"


def test_confusion_matrix_with_long_names_numbers_its_columns_and_keeps_recall():
    for width in (74, 54):
        layout = confusion_layout(tui_fakes.confusion(8), LONG_NAMES, width)
        assert layout.numbered and not layout.scrolls
        assert layout.columns[-1] == "recall" and layout.columns[1:-1] == [str(i) for i in range(1, 9)]
        assert table_width(layout) <= width
        assert str(layout.rows[2][0]).startswith("3 malignant")
        assert all(str(row[-1]).endswith("%") for row in layout.rows)
    assert str(confusion_layout(tui_fakes.confusion(8), LONG_NAMES, 74).rows[2][0]) == "3 malignant-melanoma-in-situ"
    assert str(confusion_layout(tui_fakes.confusion(8), LONG_NAMES, 54).rows[2][0]).endswith("…")


@async_test
async def test_class_names_with_brackets_are_shown_whole(tmp_path, runtime_dir):
    """A class name like `noise [bg]` is text, not markup, in the summary and the per-class table."""
    classes = ["tone", "noise [bg]", "[unk]"]
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="finished", finished=True)
    tui_fakes.write_evaluation(run_dir, tui_fakes.evaluation_result(classes=classes))
    app = LonghaulApp(run_dir, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), refresh_interval=0.0)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.screen.loaded and app.screen.model.evaluation, what="the run")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.query("#summary-confusion"),
                       what="the summary")
        table = app.screen.query_one("#summary-confusion")
        shown = [table.render_line(y).text for y in range(4)]
        assert "noise [bg]" in shown[2] and "[unk]" in shown[3], shown
        assert "noise [bg]" in table.render_line(0).text
        await pilot.press("escape", "t")
        await wait_for(pilot, lambda: app.screen.query("#detail-table")
                       and app.screen.query_one("#detail-table").row_count == 3, what="the per-class table")
        await pilot.pause(0.1)
        rows = [app.screen.query_one("#detail-table").render_line(y).text for y in range(1, 4)]
        assert "noise [bg]" in rows[1] and "[unk]" in rows[2], rows


def test_confusion_matrix_too_wide_scrolls_with_recall_next_to_the_class():
    names = [f"class-{i}" for i in range(40)]
    layout = confusion_layout(tui_fakes.confusion(40), names, 74)
    assert layout.scrolls and layout.columns[:2] == ["true \\ pred", "recall"]
    assert str(layout.rows[0][1]).endswith("%")


@async_test
async def test_summary_confusion_matrix_fits_80x24(tmp_path, runtime_dir):
    run_dir = tui_fakes.write_run_dir(tmp_path / "demo-b0", state="finished", finished=True)
    tui_fakes.write_evaluation(run_dir, tui_fakes.evaluation_result(classes=LONG_NAMES))
    app = LonghaulApp(run_dir, tmp_path, clock=fmt.frozen_clock(tui_fakes.T0), refresh_interval=0.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.screen.loaded and app.screen.model.evaluation, what="the run")
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.query("#summary-confusion"),
                       what="the summary")
        await pilot.pause(0.1)
        table = app.screen.query_one("#summary-confusion")
        assert table.virtual_size.width <= table.size.width, "the matrix is cut (recall off screen)"
        assert [str(c.label) for c in table.columns.values()][-1] == "recall"
        await pilot.resize_terminal(160, 48)
        await pilot.pause(0.2)
        table = app.screen.query_one("#summary-confusion")
        assert table.virtual_size.width <= table.size.width


# ----------------------------------------------------------------------------- tabs and footer
@async_test
async def test_active_tab_is_marked_without_colour(tmp_path, runtime_dir):
    app = make_app(tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, what="the run")
        await pilot.press("2")
        await pilot.pause(0.1)
        for tab in app.screen.query("Tab"):
            styled = tab.styles.text_style
            assert bool(styled.bold and styled.underline) == tab.has_class("-active"), str(tab.label)


@async_test
async def test_footer_shows_escape_back_to_the_runs(tmp_path, runtime_dir):
    app = make_app(tui_fakes.write_run_dir(tmp_path / "demo-b0", state="stopped"))
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.loaded, what="the run")
        await pilot.pause(0.1)
        shown = [(binding_keys(b), b.description) for b in (a.binding for a in app.screen.active_bindings.values())
                 if b.show]
        assert ("Esc", "Runs") in shown


# ----------------------------------------------------------------------------- the README screenshot
def test_readme_screenshot_replays_the_real_recording(tmp_path, runtime_dir, live_process):
    """bench/screenshot.py draws tests/data/real_run.msgpack (what a real daemon sent,
    bench/record_run.py): small, a real run's welcome, and every recorded frame reaches the screen."""
    import asyncio

    sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))  # last: bench/tui.py must not shadow the tui package
    import screenshot
    from trainer.run.sockets import socket_path

    assert screenshot.RECORDING.stat().st_size < 300_000
    frames = tui_fakes.read_stream(screenshot.RECORDING)
    welcome = frames[0]
    assert welcome["snapshot"]["config"]["model"] == "efficientnet_b0"
    assert any(e["kind"] == "eval" for e in welcome["snapshot"]["events"])
    assert not any("/tmp/" in str(f) for f in frames), "the recording shows a temporary path"
    run_dir = tmp_path / welcome["run"]["name"]
    screenshot.write_run_dir(run_dir, welcome, live_process)
    daemon = tui_fakes.DaemonThread(socket_path(run_dir), run_dir, frames=frames).start()
    try:
        svg = asyncio.run(screenshot.screenshot(run_dir, frames, (80, 24), "dashboard"))
    finally:
        daemon.close()
    assert "quickstart" in svg and "efficientnet_b0" in svg
