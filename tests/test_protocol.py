"""Wire protocol: framing, validation of every message type, limits, fuzzing, socket helpers."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest

from trainer import protocol as p
from trainer.protocol import ErrorCode, FrameDecoder, ProtocolError

ROOT = Path(__file__).resolve().parents[1]

PROGRESS_BODY = {
    "step": 1200, "total_steps": 90000, "epoch": 3, "total_epochs": 200, "phase": 0,
    "phase_name": "head", "epoch_step": 150, "steps_per_epoch": 450, "elapsed": 3600.5,
    "eta": 250000.0, "phase_etas": [1200.0, None],
    "metrics": {"train_loss": 0.41, "train_loss_smooth": 0.45, "lr": 1e-3, "samples_per_s": 112.0,
                "grad_norm": 1.7, "data_share": 0.05},
    "time": 1.7e9,
}
SYSTEM_BODY = {
    "time": 1.7e9, "cpu_percent": [97.0, 88.5], "load": [1.9, 1.8, 1.7], "mem_total": 8 << 30,
    "mem_used": 3 << 30, "swap_total": 0, "swap_used": 0, "trainer_rss": 1 << 30,
    "disk_free": 100 << 30, "disk_total": 500 << 30, "disk_write_bps": 1.5e6, "cpu_temp": None,
}
EVENT_BODY = {"seq": 7, "time": 1.7e9, "kind": "checkpoint", "level": "info", "message": "checkpoint at step 1200",
              "data": {"step": 1200, "stall_s": 0.4, "write_s": 2.1, "path": "ckpt/step-00001200", "bytes": 48_000_000}}
LOG_BODY = {"seq": 3, "time": 1.7e9, "stream": "stderr", "line": "warning: something"}
SNAPSHOT = {
    "state": "running",
    "config": {"model": "efficientnet_b0", "source": "synthetic", "features": "mel", "classes": ["a", "b"],
               "threads": 2, "batch_size": 32, "accum_steps": 1, "seed": 0, "monitor": "val_f1_macro",
               "mode": "max"},
    "plan": {"phases": [{"name": "head", "start_step": 0, "steps": 900, "steps_per_epoch": 450, "epochs": 2,
                         "trainable": "head", "lr_mult": 1.0}], "total_steps": 900, "lr_curve": [[0, 0.0], [900, 1e-5]]},
    "progress": {"type": "progress", **PROGRESS_BODY},
    "series": {"train_loss": {"step": [1, 2], "value": [0.9, 0.8], "min": [0.9, 0.7], "max": [0.9, 0.85]}},
    "eval": {"last": {"kind": "eval", "step": 900, "val_f1_macro": 0.5}, "best": None},
    "events": [EVENT_BODY],
    "logs": [LOG_BODY],
    "system": SYSTEM_BODY,
}

EXAMPLES = {
    "hello": {"type": "hello", "version": p.PROTOCOL_VERSION, "client": "tui"},
    "request": {"type": "request", "id": 4, "action": "checkpoint"},
    "ping": {"type": "ping"},
    "welcome": {"type": "welcome", "version": p.PROTOCOL_VERSION,
                "run": {"name": "quick", "dir": "/runs/quick", "daemon_pid": 4242}, "snapshot": SNAPSHOT},
    "error": {"type": "error", "code": "version_mismatch", "message": "client speaks 2, daemon 1"},
    "progress": {"type": "progress", **PROGRESS_BODY},
    "event": {"type": "event", **EVENT_BODY},
    "log": {"type": "log", **LOG_BODY},
    "system": {"type": "system", **SYSTEM_BODY},
    "ack": {"type": "ack", "id": 4, "ok": True, "message": ""},
    "pong": {"type": "pong"},
    "plan": {"type": "plan", "plan": SNAPSHOT["plan"], "config": {"model": {"name": "resnet18"}}},
    "record": {"type": "record", "record": {"kind": "train", "step": 3, "train_loss": 0.5}},
    "control": {"type": "control", "id": 9, "action": "stop"},
    "preparing": {"type": "preparing", "done": 1200, "total": 7200, "rate": 340.5, "eta": 17.6, "elapsed": 3.5,
                  "time": 1700000000.0, "store": "/data/store", "finished": False},
}


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def raw(obj) -> bytes:
    return frame(msgpack.packb(obj))


def code_of(data: bytes, limit: int = p.MAX_SERVER_FRAME, accept=None) -> str:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder(limit, accept).feed(data)
    return info.value.code


# ----------------------------------------------------------------------------- the table
def test_examples_cover_every_message_type():
    assert set(EXAMPLES) == set(p.MESSAGES)
    assert p.CLIENT_TO_DAEMON | p.DAEMON_TO_CLIENT | p.WORKER_TO_DAEMON | p.DAEMON_TO_WORKER == set(p.MESSAGES)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_round_trip_every_type(kind):
    msg = EXAMPLES[kind]
    data = p.encode(msg, p.MAX_SERVER_FRAME)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert FrameDecoder(p.MAX_SERVER_FRAME).feed(data) == [msg]
    assert p.validate(dict(msg)) == msg


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_required_field_is_checked(kind):
    for name, spec in p.MESSAGES[kind].items():
        if isinstance(spec, p.MayBeAbsent):
            continue
        broken = {k: v for k, v in EXAMPLES[kind].items() if k != name}
        with pytest.raises(ProtocolError) as info:
            p.validate(broken)
        assert info.value.code == ErrorCode.BAD_FIELD
        assert repr(name) in info.value.message


def test_constructors_build_valid_messages():
    assert p.hello("cli") == {"type": "hello", "version": p.PROTOCOL_VERSION, "client": "cli"}
    assert p.request(1, "pause")["action"] == "pause"
    assert p.ping() == {"type": "ping"} and p.pong() == {"type": "pong"}
    assert p.ack(1, False, "not paused") == {"type": "ack", "id": 1, "ok": False, "message": "not paused"}
    assert p.error(ErrorCode.NOT_HELLO, "x")["code"] == "not_hello"
    assert p.control(2, "resume")["type"] == "control"
    assert p.record({"kind": "eval", "step": 5})["record"]["step"] == 5
    assert p.plan({"phases": []}, {})["type"] == "plan"
    assert p.welcome(EXAMPLES["welcome"]["run"], SNAPSHOT)["snapshot"] is SNAPSHOT
    assert p.progress(**PROGRESS_BODY)["step"] == 1200
    assert p.system(**SYSTEM_BODY)["load"] == [1.9, 1.8, 1.7]
    worker_event = p.event("phase", "info", "phase 1", {"index": 1, "name": "all"}, at=5.0)
    assert "seq" not in worker_event and worker_event["time"] == 5.0
    assert p.event("state", "info", "paused", {"state": "paused"}, seq=3)["seq"] == 3
    assert p.log(1, "stdout", "hello")["line"] == "hello"
    with pytest.raises(ProtocolError, match="request.action"):
        p.request(1, "explode")
    with pytest.raises(ProtocolError, match="event.level"):
        p.event("alert", "fatal", "x")


def test_fast_path_constructors_skip_validation_only_when_asked():
    unchecked = p.event("alert", "fatal", "x", check=False)  # the receiver validates it
    assert unchecked["type"] == "event" and unchecked["level"] == "fatal"
    assert p.progress(step=1, check=False) == {"type": "progress", "step": 1}
    assert p.log(1, "stdin", "x", at=1.0, check=False)["stream"] == "stdin"
    assert p.record({"kind": "train"}, check=False)["record"] == {"kind": "train"}
    assert p.plan({}, {}, check=False) == {"type": "plan", "plan": {}, "config": {}}
    with pytest.raises(ProtocolError, match="record.record"):
        p.record({"kind": "train"})


def test_request_id_of_names_the_request_an_event_completes():
    assert p.request_id_of({"kind": "request", "data": {"id": 7, "outcome": "done"}}) == 7
    assert p.request_id_of({"type": "event", "kind": "state", "data": {"state": "paused", "request_id": 8}}) == 8
    assert p.request_id_of({"kind": "checkpoint", "data": {"request_id": 9}}) is None  # caused, not completed
    assert p.request_id_of({"kind": "state", "data": {"state": "running"}}) is None
    assert p.request_id_of({"kind": "request", "data": {"id": "7"}}) is None
    assert p.request_id_of({"kind": "request"}) is None
    assert p.request_key("request") == "id" and p.request_key("checkpoint") == "request_id"


def test_payload_length_reads_the_header_and_enforces_the_limit():
    data = p.encode(p.ping(), 100)
    assert p.payload_length(data, 100) == len(data) - p.HEADER_SIZE
    assert p.payload_length(b"xx" + data, 100, offset=2) == len(data) - p.HEADER_SIZE
    with pytest.raises(ProtocolError) as info:
        p.payload_length(struct.pack(">I", 101), 100)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("payload, code", [
    (b"\xc1", ErrorCode.BAD_FRAME),                           # reserved byte: not msgpack
    (b"", ErrorCode.BAD_FRAME),                               # empty payload
    (b"\x82\xa4type", ErrorCode.BAD_FRAME),                   # map cut short inside the frame
    (msgpack.packb([1, 2]), ErrorCode.BAD_FRAME),             # not a map
    (msgpack.packb("hello"), ErrorCode.BAD_FRAME),
    (msgpack.packb({"type": "ping"}) + b"\x00", ErrorCode.BAD_FRAME),  # two objects in one frame
    (b"\x81\xa4type\xa2\xff\xfe", ErrorCode.BAD_FRAME),       # invalid UTF-8
    (msgpack.packb({1: 2}), ErrorCode.BAD_FRAME),             # non-string key
    (msgpack.packb({"version": 1}), ErrorCode.BAD_FRAME),     # no type
    (msgpack.packb({"type": 5}), ErrorCode.BAD_FRAME),        # type not a string
    (msgpack.packb({"type": "launch"}), ErrorCode.UNKNOWN_TYPE),
    (msgpack.packb({"type": "hello", "version": 1}), ErrorCode.BAD_FIELD),
    (msgpack.packb({"type": "hello", "version": "1", "client": "x"}), ErrorCode.BAD_FIELD),
    (msgpack.packb({"type": "hello", "version": True, "client": "x"}), ErrorCode.BAD_FIELD),
    (msgpack.packb({"type": "request", "id": 1.0, "action": "pause"}), ErrorCode.BAD_FIELD),
    (msgpack.packb({"type": "request", "id": 1, "action": "PAUSE"}), ErrorCode.BAD_FIELD),
    (msgpack.packb({"type": "ack", "id": 1, "ok": 1, "message": ""}), ErrorCode.BAD_FIELD),
    (msgpack.packb({**EXAMPLES["system"], "load": [1.0, 2.0]}), ErrorCode.BAD_FIELD),
    (msgpack.packb({**EXAMPLES["progress"], "eta": "soon"}), ErrorCode.BAD_FIELD),
    (msgpack.packb({**EXAMPLES["progress"], "metrics": {"lr": "high"}}), ErrorCode.BAD_FIELD),
    (msgpack.packb({**EXAMPLES["event"], "data": []}), ErrorCode.BAD_FIELD),
    (msgpack.packb({**EXAMPLES["log"], "stream": "stdin"}), ErrorCode.BAD_FIELD),
    (msgpack.packb({"type": "record", "record": {"kind": "train"}}), ErrorCode.BAD_FIELD),
    (b"\x91" * 5000, ErrorCode.BAD_FRAME),                    # nesting deeper than msgpack allows
])
def test_bad_payloads_are_rejected_with_their_code(payload, code):
    assert code_of(frame(payload)) == code


def test_nested_errors_name_the_path():
    snapshot = {**SNAPSHOT, "events": [EVENT_BODY, {**EVENT_BODY, "level": "loud"}]}
    with pytest.raises(ProtocolError, match=r"welcome\.snapshot\.events\[1\]\.level") as info:
        p.validate({**EXAMPLES["welcome"], "snapshot": snapshot})
    assert info.value.code == ErrorCode.BAD_FIELD
    series = {"x": {"step": [1, 2], "value": [1.0], "min": [1.0], "max": [1.0]}}
    with pytest.raises(ProtocolError, match=r"snapshot\.series\.x"):
        p.validate({**EXAMPLES["welcome"], "snapshot": {**SNAPSHOT, "series": series}})
    with pytest.raises(ProtocolError, match=r"snapshot\.progress\.phase_etas\[0\]: expected number or null"):
        progress = {**PROGRESS_BODY, "phase_etas": ["soon"]}
        p.validate({**EXAMPLES["welcome"], "snapshot": {**SNAPSHOT, "progress": progress}})
    with pytest.raises(ProtocolError, match=r"snapshot\.config: missing field 'threads'"):
        config = {k: v for k, v in SNAPSHOT["config"].items() if k != "threads"}
        p.validate({**EXAMPLES["welcome"], "snapshot": {**SNAPSHOT, "config": config}})


def test_extra_fields_and_nulls_where_allowed_pass():
    msg = {**EXAMPLES["progress"], "eta": None, "phase_etas": [None], "future_field": [1, 2]}
    assert p.validate(msg) is msg
    snapshot = {**SNAPSHOT, "progress": None, "system": None, "events": [], "logs": [], "series": {},
                "eval": {"last": None, "best": None}}
    p.validate({**EXAMPLES["welcome"], "snapshot": snapshot})
    p.validate({**EXAMPLES["system"], "trainer_rss": None, "cpu_temp": 55})
    p.validate({**EXAMPLES["event"], "kind": "a_kind_from_the_future"})


def test_accept_sets_restrict_what_each_side_may_send():
    assert code_of(p.encode(EXAMPLES["progress"], p.MAX_SERVER_FRAME), accept=p.CLIENT_TO_DAEMON) == ErrorCode.UNEXPECTED_TYPE
    assert code_of(p.encode(EXAMPLES["control"], p.MAX_SERVER_FRAME), accept=p.WORKER_TO_DAEMON) == ErrorCode.UNEXPECTED_TYPE
    assert FrameDecoder(p.MAX_CLIENT_FRAME, p.CLIENT_TO_DAEMON).feed(p.encode(EXAMPLES["ping"], 100)) == [{"type": "ping"}]
    worker_event = {k: v for k, v in EXAMPLES["event"].items() if k != "seq"}
    assert FrameDecoder(p.MAX_CLIENT_FRAME, p.WORKER_TO_DAEMON).feed(p.encode(worker_event, 1000)) == [worker_event]


def test_check_hello():
    p.check_hello(p.hello("x"))
    with pytest.raises(ProtocolError) as info:
        p.check_hello(p.request(1, "pause"))
    assert info.value.code == ErrorCode.NOT_HELLO
    with pytest.raises(ProtocolError, match="version 1") as info:
        p.check_hello(p.hello("x", version=1))
    assert info.value.code == ErrorCode.VERSION_MISMATCH


# ----------------------------------------------------------------------------- framing
def test_encode_enforces_the_limit_and_encodability():
    big = p.log(1, "stdout", "x" * 70_000)
    assert len(p.encode(big, p.MAX_SERVER_FRAME)) > p.MAX_CLIENT_FRAME
    with pytest.raises(ProtocolError) as info:
        p.encode(big, p.MAX_CLIENT_FRAME)
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        p.encode({"type": "event", "data": object()}, p.MAX_CLIENT_FRAME)
    assert info.value.code == ErrorCode.BAD_FRAME


def test_frame_at_the_limit_passes_and_one_byte_over_fails():
    msg = p.log(1, "stdout", "")
    overhead = len(msgpack.packb(msg))
    msg["line"] = "y" * (p.MAX_CLIENT_FRAME - overhead - 2)  # str16 header is 2 bytes longer than fixstr
    data = p.encode(msg, p.MAX_CLIENT_FRAME)
    assert len(data) - 4 == p.MAX_CLIENT_FRAME
    assert FrameDecoder(p.MAX_CLIENT_FRAME).feed(data) == [msg]
    msg["line"] += "y"
    with pytest.raises(ProtocolError):
        p.encode(msg, p.MAX_CLIENT_FRAME)
    assert code_of(frame(msgpack.packb(msg)), limit=p.MAX_CLIENT_FRAME) == ErrorCode.FRAME_TOO_LARGE


def test_decoder_byte_by_byte_gives_the_same_messages():
    stream = b"".join(p.encode(EXAMPLES[k], p.MAX_SERVER_FRAME) for k in sorted(EXAMPLES))
    decoder = FrameDecoder(p.MAX_SERVER_FRAME)
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i:i + 1])
    assert out == [EXAMPLES[k] for k in sorted(EXAMPLES)]
    assert decoder.buffered == 0


def test_decoder_random_chunking_gives_the_same_messages():
    rng = random.Random(1)
    stream = b"".join(p.encode(EXAMPLES[k], p.MAX_SERVER_FRAME) for k in sorted(EXAMPLES)) * 3
    for _ in range(50):
        decoder, out, i = FrameDecoder(p.MAX_SERVER_FRAME), [], 0
        while i < len(stream):
            n = rng.randint(1, 600)
            out += decoder.feed(stream[i:i + n])
            i += n
        assert out == [EXAMPLES[k] for k in sorted(EXAMPLES)] * 3


def test_oversized_length_prefix_is_rejected_before_the_body_arrives():
    decoder = FrameDecoder(p.MAX_CLIENT_FRAME)
    assert decoder.feed(b"\xff\xff") == []
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b"\xff\xff")  # 4 GiB announced: rejected on the header alone
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0
    assert code_of(struct.pack(">I", p.MAX_CLIENT_FRAME + 1), limit=p.MAX_CLIENT_FRAME) == ErrorCode.FRAME_TOO_LARGE


def test_a_failed_decoder_stays_failed_and_keeps_earlier_frames():
    good = p.encode(p.ping(), 100)
    decoder = FrameDecoder(100)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(good + good + frame(b"\xc1") + good)
    assert info.value.frames == [p.ping(), p.ping()]
    with pytest.raises(ProtocolError, match="already failed"):
        decoder.feed(good)


def test_fuzz_random_bytes_and_damaged_frames_only_raise_protocol_error():
    rng = random.Random(20240611)
    valid = [p.encode(EXAMPLES[k], p.MAX_SERVER_FRAME) for k in sorted(EXAMPLES)]
    outcomes = {"ok": 0, "error": 0}
    for case in range(3000):
        style = case % 4
        if style == 0:  # random bytes with a plausible small length prefix
            body = rng.randbytes(rng.randint(0, 64))
            data = struct.pack(">I", len(body)) + body
        elif style == 1:  # pure random bytes
            data = rng.randbytes(rng.randint(0, 80))
        elif style == 2:  # a valid frame cut short, then garbage or nothing
            v = rng.choice(valid)
            data = v[:rng.randint(0, len(v))] + rng.randbytes(rng.randint(0, 8))
        else:  # a valid frame with a few bytes flipped
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        decoder = FrameDecoder(4096)
        try:
            i = 0
            while i < len(data):  # random chunking; always terminates as i only grows
                n = rng.randint(1, 16)
                for msg in decoder.feed(data[i:i + n]):
                    assert isinstance(msg, dict) and msg["type"] in p.MESSAGES
                i += n
            outcomes["ok"] += 1
        except ProtocolError as exc:
            assert exc.code in vars(ErrorCode).values()
            outcomes["error"] += 1
    assert outcomes["ok"] > 100 and outcomes["error"] > 1000


# ----------------------------------------------------------------------------- asyncio helpers
def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


def reader_with(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_read_frame_reads_messages_and_reports_end_of_stream():
    async def main():
        reader = reader_with(p.encode(EXAMPLES["welcome"], p.MAX_SERVER_FRAME) + p.encode(p.pong(), 100))
        assert await p.read_frame(reader, p.MAX_SERVER_FRAME) == EXAMPLES["welcome"]
        assert await p.read_frame(reader, p.MAX_SERVER_FRAME) == p.pong()
        with pytest.raises(asyncio.IncompleteReadError):
            await p.read_frame(reader, p.MAX_SERVER_FRAME)
        with pytest.raises(asyncio.IncompleteReadError):
            await p.read_frame(reader_with(p.encode(p.pong(), 100)[:-1]), 100)
    run(main())


def test_read_frame_rejects_bad_frames():
    async def main():
        with pytest.raises(ProtocolError) as info:  # header alone, no EOF: must not wait for the body
            await p.read_frame(reader_with(struct.pack(">I", 1 << 30), eof=False), p.MAX_CLIENT_FRAME)
        assert info.value.code == ErrorCode.FRAME_TOO_LARGE
        with pytest.raises(ProtocolError) as info:
            await p.read_frame(reader_with(p.encode(EXAMPLES["progress"], 10_000)), 10_000, p.CLIENT_TO_DAEMON)
        assert info.value.code == ErrorCode.UNEXPECTED_TYPE
    run(main())


def test_read_and_write_frame_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        async def serve(reader, writer):
            msg = await p.read_frame(reader, p.MAX_CLIENT_FRAME, p.CLIENT_TO_DAEMON)
            await p.write_frame(writer, p.ack(msg["id"], True, "ok"), p.MAX_SERVER_FRAME)
            writer.close()

        server = await asyncio.start_unix_server(serve, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            await p.write_frame(writer, p.request(12, "stop"), p.MAX_CLIENT_FRAME)
            assert await p.read_frame(reader, p.MAX_SERVER_FRAME) == p.ack(12, True, "ok")
            writer.close()
    run(main())


def test_async_fuzz_truncated_streams():
    rng = random.Random(7)
    valid = [p.encode(EXAMPLES[k], p.MAX_SERVER_FRAME) for k in sorted(EXAMPLES)]

    async def main():
        for _ in range(300):
            data = b"".join(rng.sample(valid, 3))
            data = data[:rng.randint(0, len(data))]
            reader = reader_with(data)
            try:
                while True:
                    await p.read_frame(reader, p.MAX_SERVER_FRAME)
            except (ProtocolError, asyncio.IncompleteReadError):
                pass
    run(main())


# ----------------------------------------------------------------------------- blocking sockets
def test_send_and_recv_frame_on_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        p.send_frame(a, EXAMPLES["welcome"], p.MAX_SERVER_FRAME)
        p.send_frame(a, p.pong(), p.MAX_SERVER_FRAME)
        assert p.recv_frame(b, p.MAX_SERVER_FRAME, timeout=2) == EXAMPLES["welcome"]
        assert p.recv_frame(b, p.MAX_SERVER_FRAME) == p.pong()
        assert b.gettimeout() is None  # the caller's timeout setting is restored
        with pytest.raises(TimeoutError):
            p.recv_frame(b, p.MAX_SERVER_FRAME, timeout=0.05)
        a.sendall(struct.pack(">I", 1 << 30))
        with pytest.raises(ProtocolError) as info:
            p.recv_frame(b, p.MAX_CLIENT_FRAME, timeout=2)
        assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_recv_frame_reports_a_closed_peer():
    a, b = socket.socketpair()
    with b:
        a.close()
        with pytest.raises(EOFError, match="connection closed"):
            p.recv_frame(b, 100, timeout=2)
    a, b = socket.socketpair()
    with b:
        a.sendall(p.encode(p.ping(), 100)[:-1])
        a.close()
        with pytest.raises(EOFError, match="mid-frame"):
            p.recv_frame(b, 100, timeout=2)


# ----------------------------------------------------------------------------- docs and layering
def test_protocol_doc_example_client_works_against_a_daemon(tmp_path, monkeypatch):
    """The example client of docs/PROTOCOL.md talks to a fake daemon that validates every frame."""
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    example = re.search(r"<!-- example-client -->\s*```python\n(.*?)```", doc, re.S).group(1)
    script = tmp_path / "client.py"
    script.write_text(example)
    runtime = tmp_path / "rt"
    (runtime / "longhaul").mkdir(parents=True, mode=0o700)
    run_dir = tmp_path / "checkpoints" / "quick"
    run_dir.mkdir(parents=True)
    # The socket path rule of the document, which must agree with trainer.runs.socket_path.
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    path = str(runtime / "longhaul" / f"quick-{digest}.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    from trainer.run.sockets import socket_path
    assert str(socket_path(run_dir)) == path
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)
    received = []

    def daemon():
        conn, _ = server.accept()
        with conn:
            hello = p.recv_frame(conn, p.MAX_CLIENT_FRAME, timeout=10, accept=p.CLIENT_TO_DAEMON)
            p.check_hello(hello)
            received.append(hello)
            p.send_frame(conn, EXAMPLES["welcome"], p.MAX_SERVER_FRAME)
            p.send_frame(conn, EXAMPLES["event"], p.MAX_SERVER_FRAME)
            for step in range(1201, 1206):
                p.send_frame(conn, {**EXAMPLES["progress"], "step": step}, p.MAX_SERVER_FRAME)
                p.send_frame(conn, EXAMPLES["system"], p.MAX_SERVER_FRAME)
            req = p.recv_frame(conn, p.MAX_CLIENT_FRAME, timeout=10, accept=p.CLIENT_TO_DAEMON)
            received.append(req)
            p.send_frame(conn, p.ack(req["id"], True, "pausing at the next step"), p.MAX_SERVER_FRAME)

    thread = threading.Thread(target=daemon, daemon=True)
    thread.start()
    out = subprocess.run([sys.executable, str(script), str(run_dir)], capture_output=True, text=True, timeout=30)
    thread.join(10)
    server.close()
    assert out.returncode == 0, out.stderr
    assert "running" in out.stdout and "1201" in out.stdout and "1205" in out.stdout
    assert "pausing at the next step" in out.stdout
    assert received[0]["type"] == "hello" and received[1] == {"type": "request", "id": 1, "action": "pause"}
    assert len(example.strip().splitlines()) <= 45
