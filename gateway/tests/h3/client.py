"""HTTP requests with curl_cffi's libcurl (ngtcp2 + nghttp3 for HTTP/3), for the gateway's
HTTP/3 tests: an HTTP/3 client that shares no code with the gateway.

Reads a JSON list of requests on stdin, prints a JSON list of outcomes on stdout. A request:
  {"url": ..., "http": "3" | "2" | "1.1", "resolve": "host:port:addr", "verify": CA file or
   false, "method": "GET", "headers": {...}, "body": "...", "cert": [crt, key]}
An outcome: {"status", "version", "headers" (lowercase names), "body"} or {"error": ...}.
Requests with the same "resolve" share one session (so one connection where curl can reuse
it), unless a request says "fresh": true.
"""

import json
import sys

from curl_cffi import CurlHttpVersion, CurlOpt, requests

VERSIONS = {
    "3": CurlHttpVersion.V3ONLY,
    "2": CurlHttpVersion.V2TLS,
    "1.1": CurlHttpVersion.V1_1,
}


def one(session, r):
    kwargs = dict(
        method=r.get("method", "GET"),
        url=r["url"],
        http_version=VERSIONS[r.get("http", "3")],
        verify=r.get("verify", False),
        headers=r.get("headers", {}),
        data=r.get("body"),
        allow_redirects=False,
        timeout=r.get("timeout", 10),
        # No browser impersonation: a plain client.
        default_headers=False,
    )
    if "cert" in r:
        kwargs["cert"] = tuple(r["cert"])
    try:
        resp = session.request(**kwargs)
    except Exception as e:  # noqa: BLE001 - the test reads the error text
        return {"error": str(e)}
    return {
        "status": resp.status_code,
        "version": {30: "3", 31: "3", 3: "2", 4: "2", 2: "1.1"}.get(
            int(resp.http_version), str(resp.http_version)
        ),
        "headers": {k.lower(): v for k, v in resp.headers.items()},
        "body": resp.content.decode("utf-8", "replace"),
    }


def main():
    reqs = json.load(sys.stdin)
    out = []
    sessions = {}
    for r in reqs:
        key = r.get("resolve")
        if r.get("fresh") and key in sessions:
            sessions.pop(key).close()
        if key not in sessions:
            opts = {CurlOpt.RESOLVE: [key]} if key else {}
            sessions[key] = requests.Session(curl_options=opts)
        out.append(one(sessions[key], r))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
