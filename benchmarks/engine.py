"""Sampling a phase with an inference engine (CTranslate2, llama.cpp's server) beside HF generate, like for like.

The same prompts (a preset's training prompts, formatted as bpo formats them: the chat template
for SmolLM2), the same model weights (the behavior model merged into the base weights: what an
engine is given once per phase), the same settings (n samples per prompt, temperature, top-k,
top-p, max new tokens, stop at EOS), one process, repeats after a warm-up. Counted: seconds,
generated tokens (so responses of different lengths compare as tokens/s), and the once-per-phase
cost of handing the weights to the engine (save the merged model, convert, load).

The two sample from the same distribution with different random numbers, so their tokens differ;
whether the engine samples the model's distribution is a separate measurement (not made here).

Needs CTranslate2 (``pip install -e ".[bench]"``; not a bpo dependency). With ``--llama-server BIN
--gguf FILE`` it also samples through llama.cpp's ``llama-server`` (built from llama.cpp's source,
the model converted with its ``convert_hf_to_gguf.py --outtype f32``), ``--slots`` requests in
flight, each prompt's n samples as n requests (the server takes no ``n``), min-p and repetition
penalty off so that it samples what the others sample.
Run: .venv/bin/python benchmarks/engine.py [--task quickstart --prompts 64 --n 2 --tokens 40]
     [--repeats 3] [--out docs/benchmarks/engine-speed.md]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import phase_arguments, publish  # benchmarks/common.py (scripts run from this folder)

from bpo.config import load_config
from bpo.data import load_source
from bpo.model.policy import load_policy
from bpo.model.sampling import make_backend

# (label, compute type, inter threads, intra threads, sequences per engine batch); the machine's 2 cores are
# split as one batch on 2 threads, or two batches on 1 thread each (what served it best in a sweep)
VARIANTS = [
    ("CTranslate2 fp32, 1 x 2 threads, batch 128", "float32", 1, 2, 128),
    ("CTranslate2 fp32, 2 x 1 thread, batch 16", "float32", 2, 1, 16),
    ("CTranslate2 int8 (quantised: not the model), 2 x 1 thread, batch 16", "int8_float32", 2, 1, 16),
]


def to_engine(policy, folder: Path) -> Path:
    """The model as CTranslate2 reads it: saved, converted without quantisation (fp32)."""
    from ctranslate2.converters import TransformersConverter

    hf = folder / "hf"
    policy.model.save_pretrained(hf, safe_serialization=True)
    policy.tokenizer.save_pretrained(hf)
    return Path(TransformersConverter(str(hf)).convert(str(folder / "ct2"), quantization="float32", force=True))


PORT = 8091


def start_server(binary: str, gguf: str, slots: int, threads: int):
    """llama-server on 127.0.0.1, its context split over ``slots`` (512 tokens each), once it answers /health."""
    import subprocess
    import urllib.request

    cmd = [binary, "-m", gguf, "-np", str(slots), "-c", str(512 * slots), "-t", str(threads)]
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(PORT)], stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"{binary} did not answer on port {PORT}")


def llama(ids: list[list[int]], n: int, s, slots: int) -> int:
    """Every prompt's n samples from llama-server (one request each, ``slots`` in flight); tokens generated."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def one(job: tuple[int, int]) -> int:
        i, k = job
        body = {
            "prompt": ids[i],
            "n_predict": s.max_new_tokens,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "seed": 1000 * i + k,
        }
        req = urllib.request.Request(f"http://127.0.0.1:{PORT}/completion", json.dumps(body).encode())
        return json.loads(urllib.request.urlopen(req, timeout=600).read())["tokens_predicted"]

    with ThreadPoolExecutor(slots) as pool:
        return sum(pool.map(one, [(i, k) for i in range(len(ids)) for k in range(n)]))


def main() -> None:
    parser = phase_arguments(argparse.ArgumentParser())
    parser.add_argument("--tokens", type=int, default=0, help="max new tokens (0: the preset's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-server", default="", help="a llama-server binary (optional row)")
    parser.add_argument("--gguf", default="", help="the model as an f32 GGUF, for --llama-server")
    parser.add_argument("--slots", type=int, default=32, help="llama-server parallel slots = requests in flight")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()

    cfg = load_config(a.task)
    s = replace(cfg.sampling, batch_size=a.prompts, max_new_tokens=a.tokens or cfg.sampling.max_new_tokens)
    policy = load_policy(a.model, "cpu", "float32", cfg.model.chat_template)
    records = load_source(cfg.data, "train", a.prompts, policy.tokenizer)
    ids = [policy.encode_prompt(cfg.data.prompt_template.format(prompt=r.prompt)) for r in records]
    threads = torch.get_num_threads()
    tmp, server = Path(tempfile.mkdtemp(prefix="bpo-engine-")), None
    try:
        import ctranslate2

        started = time.perf_counter()
        converted = to_engine(policy, tmp)
        ctranslate2.Generator(str(converted), device="cpu", compute_type="float32", intra_threads=threads)
        handover = time.perf_counter() - started
        tokens = [policy.tokenizer.convert_ids_to_tokens(x) for x in ids]
        eos = policy.tokenizer.eos_token

        def hf() -> int:
            groups = make_backend(policy).generate(ids, a.n, s, None, True, [r.id for r in records])
            return sum(len(c.token_ids) for g in groups for c in g)

        def ct2(compute: str, inter: int, intra: int, size: int) -> int:
            engine = ctranslate2.Generator(
                str(converted), device="cpu", compute_type=compute, inter_threads=inter, intra_threads=intra
            )
            batch = [t for t in tokens for _ in range(a.n)]  # n samples: each prompt n times
            out = engine.generate_batch(
                batch,
                max_length=s.max_new_tokens,
                include_prompt_in_result=False,
                sampling_topk=s.top_k or 0,
                sampling_topp=s.top_p,
                sampling_temperature=s.temperature,
                end_token=eos,
                return_scores=True,
                max_batch_size=size,
            )
            return sum(len(r.sequences_ids[0]) for r in out)

        rows = [
            "| backend | min s | median s | new tokens | tokens/s (median) | vs HF |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        results = {}
        runs = [("HF generate (bpo's hf backend: prefill once, batch 64 prompts)", hf)]
        runs += [(label, lambda v=v: ct2(*v[1:])) for v in VARIANTS for label in [v[0]]]
        server = start_server(a.llama_server, a.gguf, a.slots, threads) if a.llama_server else None
        if server:
            label = f"llama.cpp llama-server f32, {a.slots} slots, {threads} threads"
            runs.append((label, lambda: llama(ids, a.n, s, a.slots)))
        for name, fn in runs:
            fn()  # warm-up
            times, counts = [], []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                counts.append(fn())
                times.append(time.perf_counter() - t0)
            results[name] = (min(times), statistics.median(times), statistics.median(counts))
            print(name, results[name], flush=True)
        hf_rate = None
        for name, (lo, med, count) in results.items():
            rate = count / med
            hf_rate = hf_rate or rate
            rows.append(f"| {name} | {lo:.2f} | {med:.2f} | {count:.0f} | {rate:.0f} | {rate / hf_rate:.2f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server:
            server.terminate()
    where = f"{platform.machine()}, {threads} threads, torch {torch.__version__}"
    publish(
        "Sampling a phase: inference engines beside HF generate",
        f"`.venv/bin/python benchmarks/engine.py --task {a.task} --prompts {a.prompts} --n {a.n} --tokens "
        f"{s.max_new_tokens} --repeats {a.repeats}"
        + (f" --llama-server llama-server --gguf smollm2-f32.gguf --slots {a.slots}" if a.llama_server else "")
        + f"` on {where}: {a.prompts} {a.task} training prompts x {a.n} "
        f"samples x up to {s.max_new_tokens} new tokens, temperature {s.temperature}, top-k {s.top_k}, top-p "
        f"{s.top_p}, stop at EOS, {a.model} in fp32; {a.repeats} timed runs each after a warm-up.",
        [
            *rows,
            "",
            f"Handing the weights to CTranslate2 once per phase (save the merged model, convert, load): "
            f"{handover:.1f} s. Each CTranslate2 timing includes making its Generator from the converted folder.",
            "",
            "The samples are not the same tokens (different random numbers); whether an engine samples the "
            "model's distribution is not measured here.",
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
