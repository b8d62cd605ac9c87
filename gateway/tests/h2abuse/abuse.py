#!/usr/bin/env python3
"""HTTP/2 abuse against a cleartext (h2c, prior knowledge) listener, with raw frames from
the hyperframe and hpack packages (h2's own), for the gateway's abuse tests.

Usage: abuse.py HOST:PORT MODE [COUNT]. Modes: rapid_reset, continuation, settings, ping,
empty_data, big_headers. Sends the flood, then reads what the server answers for a few
seconds and prints one JSON line: {"result": "goaway", "code": N} (the server's GOAWAY
error code), {"result": "closed"} (closed without GOAWAY), {"result": "reset", "code": N}
(the stream was reset), {"result": "status", "status": N}, or {"result": "open"}.
"""

import json
import socket
import sys
import time

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_headers(path="/"):
    return [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]


def main():
    host, _, port = sys.argv[1].rpartition(":")
    mode = sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(PREFACE + SettingsFrame(0).serialize())
    enc = Encoder()
    out = []

    def flush():
        if out:
            try:
                s.sendall(b"".join(out))
            except OSError:
                pass
            out.clear()

    try:
        if mode == "rapid_reset":
            for i in range(count):
                sid = 1 + 2 * i
                out.append(HeadersFrame(sid, data=enc.encode(request_headers()),
                                        flags=["END_HEADERS", "END_STREAM"]).serialize())
                out.append(RstStreamFrame(sid, error_code=8).serialize())
                if len(out) > 200:
                    flush()
        elif mode == "continuation":
            out.append(HeadersFrame(1, data=enc.encode(request_headers())).serialize())
            for i in range(count):
                out.append(ContinuationFrame(
                    1, data=enc.encode([("x-pad-%d" % i, "a" * 100)])).serialize())
                if len(out) > 200:
                    flush()
        elif mode == "settings":
            for _ in range(count):
                out.append(SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize())
                if len(out) > 500:
                    flush()
        elif mode == "ping":
            for i in range(count):
                out.append(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())
                if len(out) > 500:
                    flush()
        elif mode == "empty_data":
            out.append(HeadersFrame(1, data=enc.encode(
                [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")]),
                flags=["END_HEADERS"]).serialize())
            for _ in range(count):
                out.append(DataFrame(1, data=b"").serialize())
                if len(out) > 500:
                    flush()
        elif mode == "big_headers":
            headers = request_headers() + [("x-big-%d" % i, "b" * 1000) for i in range(count)]
            block = enc.encode(headers)
            # Split into 16 KiB frames: HEADERS, then CONTINUATIONs.
            chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
            for j, c in enumerate(chunks):
                last = j == len(chunks) - 1
                flags = ["END_HEADERS", "END_STREAM"] if last else []
                if j == 0:
                    out.append(HeadersFrame(1, data=c, flags=flags if last else ["END_STREAM"]).serialize())
                else:
                    out.append(ContinuationFrame(1, data=c, flags=["END_HEADERS"] if last else []).serialize())
        else:
            print(json.dumps({"error": "unknown mode " + mode}))
            return 2
        flush()
    except OSError:
        pass

    # What the server says.
    deadline = time.time() + 5
    buf = b""
    s.settimeout(0.5)
    while time.time() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            print(json.dumps({"result": "closed"}))
            return 0
        if not data:
            print(json.dumps({"result": "closed"}))
            return 0
        buf += data
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9:9 + length]))
            buf = buf[9 + length:]
            if isinstance(frame, GoAwayFrame):
                print(json.dumps({"result": "goaway", "code": frame.error_code}))
                return 0
            if isinstance(frame, RstStreamFrame) and mode == "big_headers":
                print(json.dumps({"result": "reset", "code": frame.error_code}))
                return 0
            if isinstance(frame, HeadersFrame) and mode == "big_headers":
                print(json.dumps({"result": "status", "status": "headers"}))
                return 0
    print(json.dumps({"result": "open"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
