"""Sends HTTP/3 requests whose header lists are given verbatim (malformed ones included) with
aioquic, an HTTP/3 implementation independent of the gateway's, and reports what the server
did with each stream.

Usage: raw.py HOST PORT SNI < JSON list of requests, each a list of [name, value] pairs, or
{"headers": [...], "end": false} for a request whose stream stays open after its headers.
Prints a JSON list: {"status": N} when the server answered, {"reset": code} when it reset the
stream, {"stop_sending": code} when it only asked the client to stop sending, or
{"error": ...}. All requests go over one connection, one after the other, so a request after
a malformed one shows the connection survived.
"""

import asyncio
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting = {}

    def settle(self, stream_id, outcome):
        fut = self.waiting.pop(stream_id, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self.settle(event.stream_id, {"reset": event.error_code})
        elif isinstance(event, StopSendingReceived):
            # A reset of the response side usually follows; give it a moment.
            sid, code = event.stream_id, event.error_code
            asyncio.get_event_loop().call_later(
                0.5, self.settle, sid, {"stop_sending": code}
            )
        elif isinstance(event, ConnectionTerminated):
            for sid in list(self.waiting):
                self.settle(sid, {"error": f"connection closed: {event.error_code:#x} {event.reason_phrase}"})
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                status = dict(h3_event.headers).get(b":status", b"0")
                self.settle(h3_event.stream_id, {"status": int(status)})

    async def send(self, request):
        headers, end = request, True
        if isinstance(request, dict):
            headers, end = request["headers"], request.get("end", True)
        stream_id = self._quic.get_next_available_stream_id()
        fut = asyncio.get_event_loop().create_future()
        self.waiting[stream_id] = fut
        self.h3.send_headers(
            stream_id,
            [(k.encode(), v.encode()) for k, v in headers],
            end_stream=end,
        )
        self.transmit()
        try:
            return await asyncio.wait_for(fut, 5)
        except asyncio.TimeoutError:
            return {"error": "no answer"}


async def main():
    host, port, sni = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    requests = json.load(sys.stdin)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=sni)
    config.verify_mode = ssl.CERT_NONE
    out = []
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        for headers in requests:
            out.append(await client.send(headers))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())
