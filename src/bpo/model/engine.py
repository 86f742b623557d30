"""Sampling through an inference engine: an OpenAI-compatible completions server (vLLM, SGLang,
llama.cpp's llama-server, TGI) that is handed each phase's behavior model once.

BPO suits an engine: the behavior model is frozen for a whole phase, so the engine is given new
weights F times in a run, not every step. Each sample is one request (``n = 1``) whose seed is
derived from the keyed sample id, the key of the hf backend's noise, so a sample does not depend on
the batch it is in, and a rerun asks for the same seeds.

What bpo takes from the engine is token ids. The DPO reference log-probs are not the engine's: a
completion's ``logp`` is None, so the trainer teacher-forces the reference exactly; the engine's own
per-token log-probs are kept in ``engine_logps`` for the faithfulness check
(``benchmarks/engine_backend.py``, ``docs/benchmarks/engine.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bpo.config import Config, SamplingConfig
from bpo.errors import BpoError
from bpo.io import cache_dir
from bpo.model.ensemble import Ensemble
from bpo.model.policy import Policy
from bpo.model.sampling import Backend, Completion, row_key
from bpo.web import TRANSIENT, post_json


class EngineError(BpoError, RuntimeError):
    """The engine could not sample; the message names it and the last problem."""


def weights_key(policy: Policy, ensemble: Ensemble | None, adapter: str | None) -> str:
    """Names the weights ``adapter`` means now: a digest of the adapter's factors, so the engine is given
    a behavior model once, however many chunks of a phase ask for it, and again after a refresh."""
    if ensemble is None or adapter is None:
        return "base" if ensemble is not None else f"model-{id(policy.model)}"
    digest = hashlib.blake2b(adapter.encode(), digest_size=16)
    for name, p in ensemble.peft.named_parameters():
        if f".{adapter}." in name:
            digest.update(name.encode())
            digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_merged(policy: Policy, ensemble: Ensemble | None, adapter: str | None, folder: Path) -> Path:
    """The model ``adapter`` means, with the adapter folded into the base weights, as a HF model folder."""
    model = policy.model if ensemble is None else ensemble.peft.get_base_model()
    if hasattr(model, "merge_and_unload"):  # a PeftModel from `bpo generate --adapter`
        raise EngineError("an engine backend needs a plain model: merge the adapter first (merge_and_unload)")

    def save() -> None:
        state = {}
        for key, value in model.state_dict().items():
            if "lora_" in key:
                continue
            state[key.replace(".base_layer.", ".")] = value
        model.save_pretrained(folder, state_dict=state, safe_serialization=True)
        policy.tokenizer.save_pretrained(folder)

    if ensemble is not None and adapter is not None and not ensemble.foldable(adapter):
        raise EngineError(f"adapter {adapter!r} is not a plain LoRA of linear layers: an engine cannot be given it")
    if ensemble is None:
        weights = contextlib.nullcontext()
    else:  # the base model, or the adapter folded into it
        weights = ensemble.active(None) if adapter is None else ensemble.folded(adapter)
    with weights:
        save()
    return folder


def token_ids(payload: dict[str, Any]) -> tuple[list[int], list[float] | None, dict[str, Any]]:
    """The sampled token ids of a completions answer, the engine's log-prob of each (None when it gave them
    for other tokens) and the choice, in the forms servers give them: vLLM's ``token_ids``
    (``return_token_ids``), llama.cpp's ``__verbose.tokens`` (``verbose`` + ``return_tokens``; its
    ``logprobs.content`` leaves out tokens that end inside a UTF-8 character), or vLLM's legacy
    ``logprobs.tokens`` as ``token_id:N`` (``return_tokens_as_token_ids``)."""
    choice = payload["choices"][0]
    logprobs = choice.get("logprobs") or {}
    ids = None
    if isinstance(choice.get("token_ids"), list):
        ids = [int(t) for t in choice["token_ids"]]
    elif isinstance((payload.get("__verbose") or {}).get("tokens"), list):
        ids = [int(t) for t in payload["__verbose"]["tokens"]]
    elif isinstance(logprobs.get("tokens"), list) and all(
        isinstance(t, str) and t.startswith("token_id:") for t in logprobs["tokens"]
    ):
        ids = [int(t.split(":", 1)[1]) for t in logprobs["tokens"]]
    if ids is None:
        raise KeyError("token ids")  # malformed for bpo's purpose: retried, then refused with what to do
    if isinstance(logprobs.get("content"), list):  # llama.cpp, chat-style
        values = [float(t["logprob"]) for t in logprobs["content"]]
        values = values if [int(t["id"]) for t in logprobs["content"]] == ids else None
    else:
        values = logprobs.get("token_logprobs")
        values = [float(v) for v in values] if isinstance(values, list) and None not in values else None
    return ids, (values if values is not None and len(values) == len(ids) else None), choice


class ServerBackend(Backend):
    """Samples through an OpenAI-compatible ``/completions`` endpoint; subclasses hand the weights over.

    ``serve(adapter)`` returns the model name to ask for after making sure the server has those weights.
    """

    url = ""
    api_key: str | None = None

    def __init__(self, policy: Policy, ensemble: Ensemble | None, cfg: Config):
        self.policy, self.ensemble, self.engine = policy, ensemble, cfg.engine
        self.served: dict[str, str] = {}  # weights key -> model name

    def serve(self, adapter: str | None) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def sample(self, prompt_ids, n: int, params: SamplingConfig, adapter, return_logps: bool, keys: list[str]):
        name = self.serve(adapter)
        jobs = [(i, j) for i in range(len(prompt_ids)) for j in range(n)]

        def one(job: tuple[int, int]) -> Completion:
            i, j = job
            return self.complete(name, list(prompt_ids[i]), params, row_key(keys[i], j))

        with ThreadPoolExecutor(max(1, min(self.engine.concurrency, len(jobs)))) as pool:
            done = list(pool.map(one, jobs))
        return [done[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def body(self, name: str, prompt: list[int], params: SamplingConfig, seed: int) -> dict[str, Any]:
        """One sample's request. The sampling fields are the hf backend's; the rest switch off what servers add
        by default (llama.cpp's min-p 0.05 and sampler order, repetition penalties) and ask for token ids."""
        greedy = params.temperature == 0
        return {
            "model": name,
            "prompt": prompt,
            "max_tokens": params.max_new_tokens,
            "n": 1,
            "seed": seed,
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p,
            "top_k": -1 if greedy or not params.top_k else params.top_k,
            "min_p": 0.0,
            "logprobs": 1,
            "stream": False,
            # vLLM, SGLang
            "repetition_penalty": 1.0,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            # llama.cpp: transformers' order (temperature, then top-k, then top-p), nothing else
            "samplers": ["temperature", "top_k", "top_p"],
            "repeat_penalty": 1.0,
            "cache_prompt": True,
            "return_tokens": True,
            "verbose": True,
        }

    def complete(self, name: str, prompt: list[int], params: SamplingConfig, seed: int) -> Completion:
        body = self.body(name, prompt, params, seed)
        ids, logps, choice = self.post(self.url.rstrip("/") + "/completions", body, token_ids)
        tok = self.policy.tokenizer
        finished = choice.get("finish_reason") == "stop"
        if finished and (not ids or ids[-1] not in tok.all_special_ids) and len(ids) < params.max_new_tokens:
            ids.append(tok.eos_token_id)  # a server that leaves the end token out of its tokens
        comp = Completion(ids, tok.decode(ids, skip_special_tokens=True).strip(), finished)
        comp.engine_logps = logps
        return comp

    def post(self, url: str, body: dict[str, Any], take=None, raw: bool = False) -> Any:
        """``take(answer)`` of one POST to ``url``, retrying transient faults (``engine.retries``); an EngineError
        when they persist. ``raw``: the answer is text (vLLM's adapter endpoints), not JSON."""
        problem = ""
        for attempt in range(self.engine.retries + 1):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
                self.recover()
            try:
                answer = post_json(url, body, self.engine.timeout, self.api_key, raw)
                return take(answer) if take else answer
            except urllib.error.HTTPError as err:  # before URLError, its parent
                problem = f"HTTP {err.code} {err.reason}"
                if err.code != 429 and err.code < 500:
                    detail = err.read(300).decode("utf-8", "replace").replace("\n", " ")
                    raise EngineError(f"engine {url} answered {problem}: {detail}") from None
            except TRANSIENT as err:
                problem = f"{type(err).__name__}: {str(err)[:160]}"
        if problem.startswith("KeyError: 'token ids'"):
            raise EngineError(
                f"engine {url} returned no token ids: bpo needs them (vLLM >= 0.10.2 and llama.cpp's "
                "llama-server give them; SGLang and others with logprobs)"
            )
        raise EngineError(f"engine {url} failed after {self.engine.retries + 1} tries (last: {problem})")

    def recover(self) -> None:
        """Called before a retry: a backend that owns its server restarts it if it died."""


class OpenAIBackend(ServerBackend):
    """A server the user runs (``engine.url``, serving the base model as ``engine.model``).

    Each behavior model reaches it once: ``engine.weights=lora`` writes the adapter in PEFT format to
    ``engine.share_dir`` and loads it through vLLM's or SGLang's ``load_lora_adapter`` (unloading the
    previous one); ``engine.weights=hook`` writes the merged model and the adapter there and runs
    ``engine.hook``, which returns once the server serves the merged model as ``engine.model``.
    """

    def __init__(self, policy: Policy, ensemble: Ensemble | None, cfg: Config):
        super().__init__(policy, ensemble, cfg)
        self.url, self.base_model = self.engine.url, cfg.model.name
        self.api_key = os.environ.get(self.engine.api_key_env) or None
        self.share = Path(self.engine.share_dir or cache_dir() / "engine" / "share")
        self.loaded: str | None = None  # the adapter name loaded through the adapter endpoint
        self.folder: Path | None = None  # what the server was last given (removed once it has the next)

    def serve(self, adapter: str | None) -> str:
        if adapter is None or self.ensemble is None:
            return self.engine.model  # the base model (or the model `bpo generate` means), as the server serves it
        key = weights_key(self.policy, self.ensemble, adapter)
        if key not in self.served:
            folder = self.share / key[:16]
            self.served = {key: self.hand_over(adapter, key, folder)}  # the server keeps one behavior model
            if self.folder is not None and self.folder != folder:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = folder
        return self.served[key]

    def hand_over(self, adapter: str, key: str, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        if self.engine.weights == "hook":
            merged = write_merged(self.policy, self.ensemble, adapter, folder / "merged")
            self.ensemble.save(folder, [adapter], base_model=self.base_model)
            command = self.engine.hook.format(
                merged=shlex.quote(str(merged)), adapter=shlex.quote(str(folder / adapter))
            )
            done = subprocess.run(command, shell=True, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise EngineError(f"engine.hook exited {done.returncode} ({tail[0][:200]}); it ran: {command}")
            return self.engine.model
        self.ensemble.save(folder, [adapter], base_model=self.base_model)
        name = f"bpo-{key[:16]}"
        root = self.url.rstrip("/").removesuffix("/v1") + ("/v1" if self.engine.adapter_api == "vllm" else "")
        if self.loaded:  # one behavior model at a time: the server's adapter slots are few
            self.post(f"{root}/unload_lora_adapter", {"lora_name": self.loaded}, raw=True)
            self.loaded = None
        self.post(f"{root}/load_lora_adapter", {"lora_name": name, "lora_path": str(folder / adapter)}, raw=True)
        self.loaded = name
        return name
