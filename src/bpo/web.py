"""JSON over HTTP for the parts that talk to servers (an LLM judge, an inference engine): one request,
a whole answer by a deadline, and the faults worth retrying."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

# faults a retry can cure: the network, a server restarting, a truncated or malformed answer
TRANSIENT = (
    urllib.error.URLError,
    TimeoutError,
    ConnectionError,
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    json.JSONDecodeError,
    UnicodeDecodeError,
    KeyError,
    IndexError,
    TypeError,
)


def read_by(resp: Any, deadline: float, timeout: float) -> bytes:
    """The whole body by ``deadline``: a socket time-out bounds each read, so a server trickling its
    body a byte at a time would otherwise hold a request for ever."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no whole answer within {timeout:g} s")
        if sock is not None:
            sock.settimeout(left)
        chunk = resp.read1(1 << 16)
        if not chunk:
            if getattr(resp, "length", None):  # the server closed before the length it announced
                raise http.client.IncompleteRead(data, resp.length)
            return data
        data += chunk


def post_json(
    url: str, body: dict[str, Any] | bytes, timeout: float, api_key: str | None = None, raw: bool = False
) -> Any:
    """The decoded JSON answer to one POST of ``body`` (a dict, or JSON already encoded); its text with ``raw``.
    Raises urllib's HTTPError on a 4xx/5xx and TRANSIENT faults as they come."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = read_by(resp, deadline, timeout).decode("utf-8")
    return text if raw else json.loads(text)
