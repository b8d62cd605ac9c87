#!/usr/bin/env python3
"""An independent HBONE client for the agent's mesh test: Python's ssl (OpenSSL) and the h2
package, no code shared with the agent.

It opens mutual TLS 1.3 (ALPN h2, no SNI) to an HBONE server, sends one request (a CONNECT
to --authority, or another method), and prints one JSON line: the response status, the
server's SPIFFE ID, and, for a 200 with --send, the application's first line and the echo
of what it sent. A refused handshake prints {"error": ...} and exits 3.
"""

import argparse
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True, help="ip:port of the HBONE listener")
    p.add_argument("--authority", required=True, help="the original destination ip:port")
    p.add_argument("--ca", required=True, help="PEM roots the server must chain to")
    p.add_argument("--cert", help="PEM client certificate chain (omit: no certificate)")
    p.add_argument("--key", help="PEM client key")
    p.add_argument("--method", default="CONNECT")
    p.add_argument("--send", default="", help="bytes to send once the tunnel is open")
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()

    host, _, port = a.server.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(a.ca)
    ctx.set_alpn_protocols(["h2"])
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)

    def out(obj, code=0):
        print(json.dumps(obj), flush=True)
        return code

    try:
        raw = socket.create_connection((host, int(port)), timeout=a.timeout)
        tls = ctx.wrap_socket(raw, server_hostname=None)
    except (OSError, ssl.SSLError) as e:
        return out({"error": "handshake", "detail": str(e)}, 3)
    if tls.selected_alpn_protocol() != "h2":
        return out({"error": "alpn", "detail": str(tls.selected_alpn_protocol())}, 3)
    peer = tls.getpeercert() or {}
    server_ids = [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]

    # h2 validates every request against the rules for ordinary requests (:path, :scheme);
    # a plain CONNECT (RFC 9113 8.5) carries only :method and :authority.
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    headers = [(":method", a.method), (":authority", a.authority)]
    if a.method != "CONNECT":
        headers += [(":scheme", "https"), (":path", "/")]
    headers = [(k.encode(), v.encode()) for k, v in headers]
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, headers, end_stream=a.method != "CONNECT")
    result = {"server_identity": server_ids}
    received = b""
    sent = False
    try:
        tls.sendall(conn.data_to_send())
        while True:
            data = tls.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    result["status"] = int(dict(ev.headers)[b":status"])
                    if result["status"] != 200 or a.method != "CONNECT":
                        tls.sendall(conn.data_to_send())
                        return out(result)
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    received += ev.data
                elif isinstance(ev, (h2.events.StreamReset, h2.events.StreamEnded)):
                    result["ended"] = True
            # The application's banner first, then our bytes back.
            if b"\n" in received and not sent:
                banner, _, received = received.partition(b"\n")
                result["banner"] = banner.decode()
                if not a.send:
                    tls.sendall(conn.data_to_send())
                    return out(result)
                conn.send_data(stream, a.send.encode())
                sent = True
            if sent and len(received) >= len(a.send):
                result["echo"] = received.decode(errors="replace")
                conn.end_stream(stream)
                tls.sendall(conn.data_to_send())
                return out(result)
            tls.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError) as e:
        result["error"] = "connection"
        result["detail"] = str(e)
        return out(result, 3)
    result.setdefault("error", "closed")
    return out(result, 3)


if __name__ == "__main__":
    sys.exit(main())
