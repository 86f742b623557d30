"""A stand-in for an OpenAI-compatible server (vLLM's or SGLang's API) that records what bpo asks.

It is not an engine: it answers completions with token ids drawn from the request's seed, so
tests can check the requests (adapter loading, sampling fields, seeds) and inject faults. The
real engine's tests are in test_engine_llamacpp.py.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stub:
    def __init__(self, vocab: int = 200, eos: int = 1, length: int = 6):
        self.requests: list[tuple[str, dict]] = []
        self.vocab, self.eos, self.length = vocab, eos, length
        self.faults: list[
            str
        ] = []  # consumed one per completion request: "json", "500", "400", "slow", "empty", "noids"
        self.broken = False  # every completion answers 500
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append((self.path, body))
                    fault = stub.faults.pop(0) if stub.faults and self.path.endswith("/completions") else ""
                if self.path.endswith("load_lora_adapter"):
                    return self.reply(200, b"Success", "text/plain")
                if stub.broken or fault == "500":
                    return self.reply(500, b"{}")
                if fault == "400":
                    return self.reply(400, b'{"error": "prompt too long"}')
                if fault == "json":
                    return self.reply(200, b'{"choices": [')
                if fault == "slow":
                    time.sleep(1.5)
                rng = random.Random(body["seed"])
                ids = [rng.randrange(2, stub.vocab) for _ in range(min(stub.length, body["max_tokens"]))]
                stop = rng.random() < 0.5 and len(ids) < body["max_tokens"]
                ids += [stub.eos] if stop else []
                choice = {"text": "", "finish_reason": "stop" if stop else "length", "logprobs": None}
                if fault != "noids":
                    choice["token_ids"] = ids
                answer = {"choices": [] if fault == "empty" else [choice]}
                self.reply(200, json.dumps(answer).encode())

            def reply(self, code: int, data: bytes, kind: str = "application/json"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a time-out test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
