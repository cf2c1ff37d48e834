#!/usr/bin/python3
"""HTTP/2 conformance cases against finguard, framed by a third-party HTTP/2
implementation (hyperframe for frames, hpack for header blocks), not by
finguard's own stack. Each case opens its own TLS connection (ALPN h2), sends
what RFC 9113 forbids or a client may do, and checks the answer the RFC
requires. Prints one JSON line per case: {"case", "result", "detail"}, where result is
"pass", "fail", or "deviation": refused and closed as the RFC requires, but
with another error code than the RFC names (the HTTP/2 library's choice).

usage: h2_conformance.py HOST PORT CAFILE SERVER_NAME
"""

import json
import socket
import ssl
import sys
import time

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

HOST, PORT, CAFILE, NAME = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WAIT = 5.0

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x5, 0x6, 0x9
ENHANCE_YOUR_CALM = 0xB


class Conn:
    def __init__(self, settings=None):
        ctx = ssl.create_default_context(cafile=CAFILE)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((HOST, PORT), timeout=WAIT)
        self.sock = ctx.wrap_socket(raw, server_hostname=NAME)
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.buf = b""
        self.enc = Encoder()
        self.closed = False
        s = SettingsFrame(0)
        for k, v in (settings or {}).items():
            s.settings[k] = v
        self.sock.sendall(PREFACE + s.serialize())

    def send(self, *frames):
        for f in frames:
            self.sock.sendall(f if isinstance(f, bytes) else f.serialize())

    def headers(self, stream, path="/", end_stream=True, extra=(), method="GET", end_headers=True):
        hs = [(":method", method), (":scheme", "https"), (":authority", NAME), (":path", path)]
        hs += list(extra)
        f = HeadersFrame(stream)
        f.data = self.enc.encode(hs)
        flags = set()
        if end_stream:
            flags.add("END_STREAM")
        if end_headers:
            flags.add("END_HEADERS")
        f.flags = flags
        return f

    def frame(self, deadline):
        """The next frame, or None once the connection closed or the deadline passed."""
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    f.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                        self.send(SettingsFrame(0, flags=["ACK"]))
                    return f
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                return None
            self.buf += data

    def until(self, pred, wait=WAIT):
        """Frames up to and including the first that matches (None: no match)."""
        deadline = time.monotonic() + wait
        seen = []
        while True:
            f = self.frame(deadline)
            if f is None:
                return None, seen
            seen.append(f)
            if pred(f):
                return f, seen

    def closes(self, wait=WAIT):
        """Whether the server closes the connection within `wait`."""
        deadline = time.monotonic() + wait
        while self.frame(deadline) is not None:
            pass
        return self.closed

    def response(self, stream, wait=WAIT):
        """(status, body, data frames before the end) of a stream's response, or None."""
        status, body = None, b""
        deadline = time.monotonic() + wait
        while True:
            f = self.frame(deadline)
            if f is None:
                return None
            if getattr(f, "stream_id", None) != stream:
                continue
            if isinstance(f, RstStreamFrame):
                return None
            if isinstance(f, HeadersFrame) and status is None:
                from hpack import Decoder

                self.dec = getattr(self, "dec", None) or Decoder()
                hs = dict(self.dec.decode(f.data))
                status = hs.get(":status") or hs.get(b":status")
                status = status.decode() if isinstance(status, bytes) else status
            if isinstance(f, DataFrame):
                body += f.data
                if f.data:
                    self.send(WindowUpdateFrame(0, window_increment=len(f.data)))
            if "END_STREAM" in f.flags:
                return status, body


def goaway(codes, deviation=None):
    """GOAWAY with one of `codes`, then the connection closed. `deviation`:
    the code the server's HTTP/2 library is known to send instead; reported
    as a deviation, not a pass."""

    def check(c):
        f, seen = c.until(lambda f: isinstance(f, GoAwayFrame))
        if f is None:
            return False, "no GOAWAY; saw %s" % [type(x).__name__ for x in seen]
        if not c.closes():
            return False, "GOAWAY %#x but the connection stayed open" % f.error_code
        if f.error_code in codes:
            return True, "GOAWAY %#x, closed" % f.error_code
        if f.error_code == deviation:
            return "deviation", "GOAWAY %#x instead of %s, closed" % (f.error_code, sorted(hex(x) for x in codes))
        return False, "GOAWAY with code %#x" % f.error_code

    return check


def rst_or_goaway(stream, codes, deviation=None):
    def check(c):
        f, seen = c.until(
            lambda f: isinstance(f, GoAwayFrame) or (isinstance(f, RstStreamFrame) and f.stream_id == stream)
        )
        if f is None:
            return False, "neither RST_STREAM nor GOAWAY; saw %s" % [type(x).__name__ for x in seen]
        if f.error_code == deviation and f.error_code not in codes:
            return "deviation", "%s %#x instead of %s" % (type(f).__name__, f.error_code, sorted(hex(x) for x in codes))
        if f.error_code not in codes:
            return False, "%s with code %#x" % (type(f).__name__, f.error_code)
        return True, "%s %#x" % (type(f).__name__, f.error_code)

    return check


def still_serves(c, stream):
    c.send(c.headers(stream))
    r = c.response(stream)
    return r is not None and r[0] == "200"


def stream_error(stream, codes):
    """RST_STREAM with one of `codes` on `stream`, and the connection keeps
    serving; or, as RFC 9113 5.4.1 allows, the stream error treated as a
    connection error: GOAWAY with the same code."""

    def check(c):
        f, seen = c.until(lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)))
        if isinstance(f, GoAwayFrame) and f.error_code in codes:
            return c.closes(), "GOAWAY %#x (the stream error made a connection error), closed" % f.error_code
        if not isinstance(f, RstStreamFrame) or f.stream_id != stream:
            return False, "expected RST_STREAM on %d; saw %s" % (stream, [repr(x)[:60] for x in seen])
        if f.error_code not in codes:
            return False, "RST_STREAM with code %#x" % f.error_code
        if not still_serves(c, stream + 2):
            return False, "the connection stopped serving after a stream error"
        return True, "RST_STREAM %#x, connection still serves" % f.error_code

    return check


def case_window_update_overflow_connection(c):
    c.send(WindowUpdateFrame(0, window_increment=2**31 - 1))
    return goaway({FLOW_CONTROL_ERROR})(c)


def case_window_update_overflow_stream(c):
    c.send(c.headers(1, path="/slow"), WindowUpdateFrame(1, window_increment=2**31 - 1))
    return rst_or_goaway(1, {FLOW_CONTROL_ERROR})(c)


def case_window_update_zero_increment(c):
    c.send(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00")
    return goaway({PROTOCOL_ERROR})(c)


def case_data_on_idle_stream(c):
    c.send(DataFrame(3, data=b"x"))
    return goaway({PROTOCOL_ERROR, STREAM_CLOSED})(c)


def case_rst_stream_on_idle_stream(c):
    c.send(RstStreamFrame(5, error_code=0x8))
    return goaway({PROTOCOL_ERROR})(c)


def case_headers_on_a_closed_stream(c):
    c.send(c.headers(1))
    if c.response(1) is None:
        return False, "no response to the first request"
    c.send(c.headers(1))
    return goaway({PROTOCOL_ERROR, STREAM_CLOSED})(c)


def case_data_after_end_stream(c):
    c.send(c.headers(1, path="/slow"), DataFrame(1, data=b"late"))
    return rst_or_goaway(1, {STREAM_CLOSED}, deviation=PROTOCOL_ERROR)(c)


def case_settings_initial_window_too_large(c):
    s = SettingsFrame(0)
    s.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = 2**31
    c.send(s)
    return goaway({FLOW_CONTROL_ERROR}, deviation=PROTOCOL_ERROR)(c)


def case_settings_enable_push_invalid(c):
    s = SettingsFrame(0)
    s.settings[SettingsFrame.ENABLE_PUSH] = 2
    c.send(s)
    return goaway({PROTOCOL_ERROR})(c)


def case_settings_bad_length(c):
    c.send(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00")
    return goaway({FRAME_SIZE_ERROR}, deviation=PROTOCOL_ERROR)(c)


def case_settings_on_a_stream(c):
    c.send(b"\x00\x00\x00\x04\x00\x00\x00\x00\x01")
    return goaway({PROTOCOL_ERROR})(c)


def case_frame_over_max_frame_size(c):
    c.send(c.headers(1, end_stream=False, method="POST", path="/up"))
    c.send(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"x" * 16385)
    return goaway({FRAME_SIZE_ERROR})(c)


def case_malformed_header_block(c):
    f = HeadersFrame(1)
    f.data = b"\xff\xff\xff\xff\xff\xff\xff"  # an index far past the tables
    f.flags = {"END_HEADERS", "END_STREAM"}
    c.send(f)
    return goaway({COMPRESSION_ERROR}, deviation=PROTOCOL_ERROR)(c)


def case_uppercase_header_name(c):
    c.send(c.headers(1, extra=[("X-Upper", "1")]))
    return stream_error(1, {PROTOCOL_ERROR})(c)


def case_missing_path(c):
    f = HeadersFrame(1)
    f.data = c.enc.encode([(":method", "GET"), (":scheme", "https"), (":authority", NAME)])
    f.flags = {"END_HEADERS", "END_STREAM"}
    c.send(f)
    return stream_error(1, {PROTOCOL_ERROR})(c)


def case_connection_specific_header(c):
    c.send(c.headers(1, extra=[("connection", "keep-alive")]))
    return stream_error(1, {PROTOCOL_ERROR})(c)


def case_oversized_header_list(c):
    # 40 kB of fields, in frames within the 16 kB frame size: HEADERS, CONTINUATIONs.
    h = c.headers(1, extra=[("x-big-%d" % i, "b" * 4000) for i in range(10)], end_headers=False)
    block, h.data = h.data, h.data[:16000]
    c.send(h)
    rest = block[16000:]
    while rest:
        piece, rest = rest[:16000], rest[16000:]
        c.send(ContinuationFrame(1, data=piece, flags=[] if rest else ["END_HEADERS"]))
    deadline = time.monotonic() + WAIT
    while True:
        f = c.frame(deadline)
        if f is None:
            return False, "no answer to an oversized header list"
        if isinstance(f, GoAwayFrame):
            return c.closes(), "GOAWAY %#x" % f.error_code
        if isinstance(f, RstStreamFrame) and f.stream_id == 1:
            ok = still_serves(c, 3)
            return ok, "RST_STREAM %#x, %s" % (f.error_code, "still serves" if ok else "stopped serving")
        if isinstance(f, HeadersFrame) and f.stream_id == 1:
            from hpack import Decoder

            hs = dict(Decoder().decode(f.data))
            status = hs.get(":status") or hs.get(b":status")
            status = status.decode() if isinstance(status, bytes) else status
            return status == "431", "answered %s" % status


def case_continuation_flood(c):
    h = c.headers(1, end_headers=False)
    c.send(h)
    junk = c.enc.encode([("x-flood", "z" * 1000)])
    try:
        for _ in range(2000):
            c.send(ContinuationFrame(1, data=junk))
    except OSError:
        pass  # cut off mid-flood: what a server should do
    f, seen = c.until(lambda f: isinstance(f, GoAwayFrame))
    closed = c.closes()
    if f is None and not closed:
        return False, "the flood was neither refused nor cut off"
    return closed, "GOAWAY %s, closed %s" % (hex(f.error_code) if f else None, closed)


def case_continuation_on_another_stream(c):
    c.send(c.headers(1, end_headers=False))
    c.send(ContinuationFrame(3, data=c.enc.encode([("x-a", "b")]), flags=["END_HEADERS"]))
    return goaway({PROTOCOL_ERROR})(c)


def case_zero_window_then_opened(c):
    c.send(c.headers(1))
    f, seen = c.until(lambda f: isinstance(f, DataFrame) and f.data, wait=1.5)
    if f is not None:
        return False, "DATA sent into a zero window"
    if not any(isinstance(x, HeadersFrame) and x.stream_id == 1 for x in seen):
        return False, "no response head; saw %s" % [type(x).__name__ for x in seen]
    c.send(WindowUpdateFrame(1, window_increment=65535))
    f, _ = c.until(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
    if f is None:
        return False, "no body after the window opened"
    return True, "body held back until WINDOW_UPDATE"


def case_client_reset_mid_response(c):
    c.send(c.headers(1, path="/slow"), RstStreamFrame(1, error_code=0x8))
    if not still_serves(c, 3):
        return False, "the connection stopped serving after the client's reset"
    return True, "next stream served"


def case_ping_is_answered(c):
    c.send(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"finguard")
    f, _ = c.until(lambda f: type(f).__name__ == "PingFrame" and "ACK" in f.flags)
    return f is not None and f.opaque_data == b"finguard", "PING ACK"


CASES = [
    (name[5:], fn, None)
    for name, fn in sorted(globals().items())
    if name.startswith("case_") and name != "case_zero_window_then_opened"
] + [("zero_window_then_opened", case_zero_window_then_opened, {SettingsFrame.INITIAL_WINDOW_SIZE: 0})]

only = sys.argv[5:] or None
for name, fn, settings in CASES:
    if only and name not in only:
        continue
    try:
        c = Conn(settings)
        ok, detail = fn(c)
        c.sock.close()
    except Exception as e:  # a case that cannot run is a failure, with its reason
        ok, detail = False, "%s: %s" % (type(e).__name__, e)
    result = "deviation" if ok == "deviation" else ("pass" if ok else "fail")
    print(json.dumps({"case": name, "result": result, "detail": detail}), flush=True)
