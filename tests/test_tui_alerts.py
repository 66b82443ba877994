"""The alert bar: which alert shows (tui/alerts_model.py, pure), how the line gives way when
narrow (tui/widgets/alerts.layout), and the `a` key in a real app (pilot)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from pilot import async_test, make_app  # noqa: E402

from tui.alerts_model import ActionFeedback, AlertBook, alert_key  # noqa: E402
from tui.model import RunModel  # noqa: E402
from tui import fmt  # noqa: E402
from tui.widgets.alerts import AlertBar, AlertInfo, alert_line, layout  # noqa: E402

T = 1_700_000_000.0


def ev(seq: int, kind: str, level: str, message: str = "", **data) -> dict:
    return {"seq": seq, "time": T + seq, "kind": kind, "level": level, "message": message or kind, "data": data}


def book_of(*events: dict) -> AlertBook:
    book = AlertBook()
    for event in events:
        book.add_event(event)
    return book


# ----------------------------------------------------------------------------- the model
def test_the_most_severe_alert_shows_not_the_newest():
    # kill -9: the crash (error) then the restart (warning); the crash must stay in front
    book = book_of(ev(1, "crash", "error", "trainer killed (SIGKILL)"), ev(2, "restart", "warning", "restarting in 2 s"))
    assert book.top().kind == "crash"
    assert [a.kind for a in book.pending()] == ["crash", "restart"]
    # among equals, the newest first
    book = book_of(ev(1, "alert", "warning", "swap in use", what="swap"), ev(2, "early_stopping", "warning"))
    assert book.top().kind == "early_stopping"


def test_acknowledge_steps_aside_and_is_counted():
    book = book_of(ev(1, "crash", "error"), ev(2, "alert", "warning", "swap", what="swap"))
    assert book.acknowledge().kind == "crash"
    assert book.top().key == "alert:swap" and book.acknowledged == 1
    assert book.acknowledge().key == "alert:swap"
    assert book.top() is None and book.acknowledged == 2
    assert book.acknowledge() is None
    book.add_event(ev(3, "crash", "error", "again"))  # a new occurrence is news again
    assert book.top().message == "again" and book.acknowledged == 1


def test_resolution_rules_of_todays_events():
    # a restart ends when the trainer runs again; the crash stays until acknowledged
    book = book_of(ev(1, "crash", "error"), ev(2, "restart", "warning"), ev(3, "state", "info", state="starting"))
    assert {a.key for a in book.pending()} == {"crash", "restart"}
    book.add_event(ev(4, "state", "info", state="running"))
    assert {a.key for a in book.pending()} == {"crash"}
    # ... or when progress newer than it arrives (a snapshot's older progress does not count)
    book = book_of(ev(1, "restart", "warning"))
    book.note_progress(T)
    assert book.top() is not None
    book.note_progress(T + 5)
    assert book.top() is None
    # data.alert / data.resolves (the contention alert)
    book = book_of(ev(1, "contention", "warning", "oversubscribed", alert="oversubscribed"))
    assert book.top().key == "oversubscribed"
    book.add_event(ev(2, "contention", "info", "load back below cores", resolves="oversubscribed"))
    assert book.top() is None
    # a full disk pauses (state error + alert error) and ends when space is back
    book = book_of(ev(1, "state", "error", "paused: disk full", state="paused", reason="disk_full"),
                   ev(2, "alert", "error", "disk full", what="disk_full"))
    assert len(book.pending()) == 2
    book.add_event(ev(3, "alert", "info", "disk space is back", what="disk_space_back"))
    book.add_event(ev(4, "state", "info", "running", state="running"))
    assert book.pending() == []
    # the journal: "cannot write events.jsonl" ends with "written again"
    book = book_of(ev(1, "alert", "error", "cannot write", what="write_failed", file="events.jsonl"))
    book.add_event(ev(2, "alert", "info", "written again", what="write_resumed", file="events.jsonl", lost=0))
    assert book.pending() == []
    # a failed checkpoint ends with the next checkpoint written; early stopping's warning with its info
    book = book_of(ev(1, "checkpoint_failed", "error"), ev(2, "early_stopping", "warning", "1 eval left"))
    book.add_event(ev(3, "checkpoint", "info", step=10))
    book.add_event(ev(4, "early_stopping", "info", "patience reset"))
    assert book.pending() == []
    # a normal finish reads calmly: the crash it recovered from is history
    book = book_of(ev(1, "crash", "error"), ev(2, "restart", "warning"), ev(3, "finished", "info"))
    assert book.pending() == []


def test_keys_and_one_offs():
    assert alert_key(ev(1, "alert", "warning", "x", alert="oversubscribed")) == "oversubscribed"
    assert alert_key(ev(1, "alert", "warning", "x", what="swap")) == "alert:swap"
    assert alert_key(ev(1, "restart", "warning")) == "restart"
    # alerts that name no condition each stand for themselves (offline snapshot problems)
    book = book_of(ev(1, "alert", "warning", "history damaged"), ev(2, "alert", "warning", "plan missing"))
    assert len(book.pending()) == 2


def test_a_lost_node_is_an_error_in_front_named_as_such_until_acknowledged_or_finished():
    # the daemon's order: the node is lost, then the elastic agent restarts the group
    lost = ev(1, "alert", "error", "rank 1 (boxb) stopped answering", what="node_lost", host="boxb", rank=1)
    book = book_of(lost, ev(2, "restart", "warning", "restarting the group from step 5000"))
    assert alert_key(lost) == "alert:node_lost"
    top = book.top()
    assert top.key == "alert:node_lost" and top.level == "error" and top.label == "node lost"
    assert alert_line(top, fmt.frozen_clock(T)) == "22:13:21 node lost: rank 1 (boxb) stopped answering"
    assert str(layout(AlertInfo(alert=alert_line(top, fmt.frozen_clock(T)), alert_level="error", more_alerts=1),
                      76, narrow=True)).startswith("ERROR 22:13:21 node lost: rank 1 (boxb)")
    # the group trains again: the restart is over, the lost node stays until acknowledged
    book.note_progress(T + 10)
    assert [a.key for a in book.pending()] == ["alert:node_lost"]
    book.add_event(ev(3, "finished", "info"))  # a run that came through reads calmly
    assert book.pending() == []
    # other alerts keep their kind as label
    assert book_of(ev(1, "alert", "warning", "swap in use", what="swap")).top().label == ""
    assert alert_line(book_of(ev(1, "alert", "warning", "swap in use", what="swap")).top(),
                      fmt.frozen_clock(T)) == "22:13:21 alert: swap in use"


def test_sync_reads_only_new_events_and_keeps_acknowledgements_over_a_reconnect():
    model = RunModel()
    model.reset_feeds([ev(1, "crash", "error"), ev(2, "alert", "warning", "swap", what="swap")], [])
    book = AlertBook()
    assert book.sync(model, model.generation, model.events, model.events_total)
    assert not book.sync(model, model.generation, model.events, model.events_total)  # nothing new
    book.acknowledge()
    model.apply_event(ev(3, "restart", "warning"))
    book.sync(model, model.generation, model.events, model.events_total)
    assert [a.kind for a in book.pending()] == ["restart", "alert"]
    model.reset_feeds(list(model.events), [])  # a reconnect: the snapshot repeats the events
    book.sync(model, model.generation, model.events, model.events_total)
    assert [a.kind for a in book.pending()] == ["restart", "alert"] and book.acknowledged == 1


def test_derived_conditions_come_and_go():
    book = AlertBook()
    book.set_condition("disk_low", "warning", "disk space LOW: 1 GiB")
    assert book.top().message == "disk space LOW: 1 GiB" and book.top().time is None
    book.acknowledge()
    book.set_condition("disk_low", "warning", "disk space LOW: 0.9 GiB")  # still acknowledged
    assert book.top() is None
    book.set_condition("disk_low", "warning", None)
    assert book.active == {}


def test_action_feedback_expires():
    now = [100.0]
    feedback = ActionFeedback(lambda: now[0])
    feedback.set("✓ checkpoint: written", "info")
    assert feedback.current() == ("✓ checkpoint: written", "info")
    now[0] += 8.1
    assert feedback.current() == ("", "info")
    feedback.set("checkpoint refused: busy", "error")
    now[0] += 20
    assert feedback.current()[0] == "checkpoint refused: busy"  # errors stay longer
    now[0] += 11
    assert feedback.current()[0] == ""


# ----------------------------------------------------------------------------- the line
def test_the_suffix_is_kept_whole_at_80_columns():
    info = AlertInfo(alert="08:45:32 alert: swap in use: 310 MiB (training may slow down) and more words here",
                     alert_level="warning", more_alerts=1)
    line = str(layout(info, 76, narrow=True))
    assert line.endswith("… +1 ›3") and len(line) <= 76
    wide = str(layout(info, 156, narrow=False))
    assert wide.endswith("(+1, view 3)") and "more words here" in wide


def test_connection_text_gives_way_before_the_alert_is_unreadable():
    info = AlertInfo(connection="offline: run STOPPED, no daemon; press r to resume",
                     connection_short="no daemon; r resumes", alert="00:00:00 crash: trainer killed by SIGKILL",
                     alert_level="error", more_alerts=1)
    line = str(layout(info, 76, narrow=True))
    assert line.startswith("no daemon; r resumes") and "trainer killed by SIGKILL" in line and line.endswith("+1 ›3")
    line = str(layout(info, 100, narrow=False))
    assert "trainer killed" in line and len(line) <= 100


def test_connection_trouble_keeps_its_words():
    info = AlertInfo(connection="disconnected (daemon closed the connection), retrying in 3s (attempt 2)",
                     trouble=True, alert="00:00:00 crash: trainer killed by SIGKILL", alert_level="error")
    line = str(layout(info, 76, narrow=False))
    assert line.startswith("⚠ disconnected (daemon closed the connection), retrying in 3s") and "+1" in line


def test_a_finish_reads_calmly():
    model = RunModel(state="finished")
    from tui.widgets.alerts import connection_text
    text, short, trouble = connection_text(model, "offline", None)
    assert text == "finished · read from the run directory" and not trouble
    assert "⚠" not in str(layout(AlertInfo(connection=text, connection_short=short), 78, narrow=True))
    assert connection_text(RunModel(state="interrupted"), "offline", None)[2] is True


def test_a_queued_run_says_it_waits_for_a_slot_not_that_its_daemon_is_missing():
    from tui.widgets.alerts import connection_text

    text, short, trouble = connection_text(RunModel(state="queued"), "offline", None)
    assert text.startswith("queued: it starts when a slot is free") and "no daemon" not in text and not trouble


# ----------------------------------------------------------------------------- in the app
def write_crash_run(tmp_path: Path) -> Path:
    run_dir = tui_fakes.write_run_dir(tmp_path / "crashed", state="interrupted")
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    events = [e for e in events if e["kind"] not in ("crash", "restart")]
    last = events.pop()
    # after the last progress the run directory knows of (a restart older than it would be over)
    late = [ev(2000, "crash", "error", "trainer killed by SIGKILL"), ev(2001, "restart", "warning", "restarting in 2 s")]
    events += [{**e, "time": tui_fakes.T0 + 60} for e in late]
    events.append({**last, "seq": 2002})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


@async_test
async def test_a_acknowledges_at_both_sizes(tmp_path, runtime_dir):
    run_dir = write_crash_run(tmp_path)
    for size in ((80, 24), (160, 48)):
        app = make_app(run_dir)
        async with app.run_test(size=size) as pilot:
            await tui_fakes.wait_for(pilot, lambda: app.screen.loaded, what="the run directory")
            await pilot.pause(0.1)
            bar = app.screen.query_one(AlertBar)
            first = str(bar.render())
            assert "ERROR" in first and "SIGKILL" in first, first
            assert len(first) <= size[0] - 2
            assert first.endswith("+2 ›3") if size[0] == 80 else first.endswith("(+2, view 3)")
            await pilot.press("a")
            second = str(bar.render())
            assert "restarting in 2 s" in second, second  # the next one
            assert second.endswith("+1 ✓1 ›3") if size[0] == 80 else "1 acknowledged" in second


@async_test
async def test_action_feedback_goes_away_by_itself(tmp_path, runtime_dir):
    app = make_app(write_crash_run(tmp_path))
    async with app.run_test(size=(160, 48)) as pilot:
        await tui_fakes.wait_for(pilot, lambda: app.screen.loaded, what="the run directory")
        bar = app.screen.query_one(AlertBar)
        now = [1000.0]
        bar.feedback.now = lambda: now[0]
        app.screen._set_action("✓ checkpoint: written", "info")
        await pilot.pause(0.05)
        assert "✓ checkpoint: written" in str(bar.render())
        assert bar._expiry is not None  # a timer repaints the bar when it expires
        now[0] += 9
        bar._expiry.stop()
        bar._update()  # what the timer does
        await pilot.pause(0.05)
        assert "checkpoint: written" not in str(bar.render()) and "SIGKILL" in str(bar.render())
        for _ in range(3):  # the crash, the restart, swap in use
            await pilot.press("a")
        await pilot.pause(0.05)
        assert bar.book.top() is None
        assert "a" not in app.screen.active_bindings  # nothing left to acknowledge: no `a` offered
