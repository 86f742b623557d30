"""``sampling.backend=llamacpp``: llama.cpp's ``llama-server`` on this machine, owned by bpo.

``scripts/engine.sh`` builds the server and keeps llama.cpp's HF -> GGUF converter beside it. Each
behavior model is written with its adapter folded in (the exact merge, full rank), converted to a
GGUF of the model's own precision (f32 for fp32: no quantisation) and served by a fresh server on a
free port of 127.0.0.1; a phase converts once. The server is stopped when bpo exits (by a watchdog
when bpo is killed), and started again with the same file if it dies mid-phase (the retry that
follows asks again).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from bpo.config import Config
from bpo.model.engine import EngineError, ServerBackend, weights_key, write_merged
from bpo.model.ensemble import Ensemble
from bpo.model.llamacpp_dir import engine_dir
from bpo.model.policy import Policy


def watchdog(pid: int) -> subprocess.Popen:
    """A shell that stops ``pid`` when this process dies, even by SIGKILL: it waits on a pipe only this process
    writes to, and the kernel closes the write end then. (PR_SET_PDEATHSIG fires when the *thread* that started
    the server exits, and a server that died is started again from a sampling worker thread.)"""
    cmd = ["sh", "-c", f"read x; kill {pid} 2>/dev/null"]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppBackend(ServerBackend):
    def __init__(self, policy: Policy, ensemble: Ensemble | None, cfg: Config):
        super().__init__(policy, ensemble, cfg)
        self.dir = engine_dir(self.engine.dir)
        self.work = Path(tempfile.mkdtemp(prefix="bpo-llamacpp-"))
        self.proc: subprocess.Popen | None = None
        self.watch: subprocess.Popen | None = None
        self.gguf: Path | None = None
        self.log = self.work / "server.log"
        self.threads = self.engine.threads or torch.get_num_threads()
        self.restarting = threading.Lock()
        # each parallel slot holds the longest prompt the data lets through and its longest response
        longest = max(cfg.sampling.max_new_tokens, cfg.eval.max_new_tokens)
        self.slot_tokens = (cfg.data.max_prompt_tokens or 4096) + longest
        atexit.register(self.close)

    def serve(self, adapter: str | None) -> str:
        key = weights_key(self.policy, self.ensemble, adapter)
        if key not in self.served:
            self.start(self.convert(adapter))
            self.served = {key: "bpo"}
        return "bpo"

    def convert(self, adapter: str | None) -> Path:
        """The model ``adapter`` means as a GGUF: merged HF weights, then llama.cpp's converter, no quantisation."""
        hf = write_merged(self.policy, self.ensemble, adapter, self.work / "hf")
        outtype = self.outtype()
        out = self.work / "model.gguf.tmp"
        env = {**os.environ, "PYTHONPATH": str(self.dir / "gguf-py"), "NO_LOCAL_GGUF": ""}
        cmd = [sys.executable, str(self.dir / "convert_hf_to_gguf.py"), str(hf), "--outfile", str(out)]
        done = subprocess.run([*cmd, "--outtype", outtype], capture_output=True, text=True, env=env)
        shutil.rmtree(hf, ignore_errors=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EngineError(f"llama.cpp's converter failed on the behavior model: {tail[0][:300]}")
        gguf = self.work / "model.gguf"
        out.replace(gguf)
        return gguf

    def outtype(self) -> str:
        return {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[self.policy.model.dtype]

    def start(self, gguf: Path, port: int = 0) -> None:
        """A fresh server for ``gguf`` (on ``port``, else a free one), once it answers /health; the previous one
        is stopped."""
        self.close(keep_files=True)
        port, slots = port or free_port(), self.engine.concurrency
        cmd = [str(self.dir / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["-np", str(slots), "-c", str(self.slot_tokens * slots), "-t", str(self.threads), "--no-webui"]
        # the KV cache in the model's precision, and for fp32 no flash attention: llama.cpp's defaults (an f16
        # cache, flash attention that rounds through f16 on CPU) move an fp32 model's log-probs by up to 1e-2 nats
        kv = self.outtype()
        cmd += ["--cache-type-k", kv, "--cache-type-v", kv] + (["-fa", "off"] if kv == "f32" else [])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.watch = watchdog(self.proc.pid)
        self.gguf, self.port, self.url = gguf, port, f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        self.close(keep_files=True)
        raise EngineError(f"llama-server did not start ({tail[0][:300]}); its log: {self.log}")

    def recover(self) -> None:
        with self.restarting:  # requests in flight all see the dead server: one of them starts it again
            if self.proc is not None and self.proc.poll() is not None and self.gguf is not None:
                print(f"llama-server exited ({self.proc.returncode}); starting it again", file=sys.stderr, flush=True)
                self.start(self.gguf, self.port)  # the same URL: the retry that follows asks it

    def close(self, keep_files: bool = False) -> None:
        if self.watch is not None:  # first: its kill must not reach a pid the stopped server gave back
            self.watch.kill()
            self.watch.stdin.close()
            self.watch.wait()
            self.watch = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        if not keep_files:
            shutil.rmtree(self.work, ignore_errors=True)
