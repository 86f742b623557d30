"""Member SFT: completion-only LoRA fine-tuning, one run per seed, to initialise the ensemble.

The paper starts its K ensemble members from K SFT LoRAs trained with different seeds (data
order and dropout), so the members begin apart. Adapters are saved in PEFT format and cached:
a second ``bpo train`` with the same SFT settings reuses them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from rich.progress import Progress
from transformers import get_cosine_schedule_with_warmup

from bpo.config import Config, sft_dir, sft_key
from bpo.data import PromptRecord, shuffled
from bpo.errors import ConfigError
from bpo.io import FolderLock, remove_leftovers, replace_dir, temp_dir, verify, write_json, write_manifest
from bpo.model.ensemble import Ensemble
from bpo.model.logprobs import build_batch
from bpo.model.policy import Policy, base_model_path


def member_paths(cfg: Config) -> list[Path]:
    return [sft_dir(cfg) / f"member{i}" for i in range(len(cfg.sft.seeds))]


def check_sft_dir(cfg: Config) -> None:
    """An SFT cache holds adapters of one set of SFT settings: an ``sft_dir`` made with others is refused."""
    recorded = sft_dir(cfg) / "settings.json"
    if recorded.exists():
        try:
            key = json.loads(recorded.read_text()).get("key")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            key = "unreadable"
        if key != sft_key(cfg):
            raise ConfigError(
                f"sft_dir {sft_dir(cfg)} holds SFT adapters made with other settings (key {key}; these settings "
                f"make {sft_key(cfg)}): use another sft_dir, or leave it empty (a cache per setting)"
            )


def sft_done(cfg: Config) -> bool:
    """Every member's adapter is in the cache and matches its manifest (a damaged one is trained again)."""
    check_sft_dir(cfg)
    return all(verify(p) is None for p in member_paths(cfg))


def tokenize_sft(policy: Policy, records: list[PromptRecord], template: str, max_length: int):
    tok = policy.tokenizer
    rows = []
    for r in records:
        if not r.reference:
            continue
        prompt = policy.encode_prompt(template.format(prompt=r.prompt))
        response = (tok(r.reference, add_special_tokens=False).input_ids + [tok.eos_token_id])[: max_length - 1]
        rows.append((prompt[-(max_length - len(response)) :], response))  # keep the prompt's end
    if not rows:
        raise ValueError("SFT needs records with a reference (label) and none was found")
    return rows


def run_sft(cfg: Config, policy: Policy, records: list[PromptRecord], progress: Progress | None = None) -> list[Path]:
    """Train one LoRA per seed on (prompt, reference) and save each atomically. Returns their folders."""
    rows = tokenize_sft(policy, records, cfg.data.prompt_template, cfg.sft.max_length)
    k = len(cfg.sft.seeds)
    ens = Ensemble.create(policy.model, cfg.lora.peft(), k, seed=cfg.sft.seeds[0])
    out = sft_dir(cfg)
    lock = FolderLock(out, "SFT cache", wait=True)  # runs sharing the cache (a compare grid) train it once
    remove_leftovers(out, [".member*-*"])  # a save cut short by a kill
    check_sft_dir(cfg)
    write_json(out / "settings.json", {"key": sft_key(cfg), "seeds": cfg.sft.seeds})
    paths = member_paths(cfg)
    steps_per_epoch = math.ceil(len(rows) / cfg.sft.batch_size)
    total = steps_per_epoch * cfg.sft.epochs
    task = progress.add_task("member SFT", total=total * k) if progress else None
    policy.model.train()  # LoRA dropout on: part of what makes members differ
    for name, seed, path in zip(ens.members, cfg.sft.seeds, paths):
        if verify(path) is None:  # cached and intact (a damaged or unfinished one is trained again)
            ens.load_state(path.parent, [name])
            if progress:
                progress.advance(task, total)
            continue
        torch.manual_seed(seed)
        params = ens.member_parameters(name)
        opt = torch.optim.AdamW(params, lr=cfg.sft.lr)
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=total)
        for epoch in range(cfg.sft.epochs):
            order = shuffled(rows, seed * 1000 + epoch)
            for i in range(0, len(order), cfg.sft.batch_size):
                chunk = order[i : i + cfg.sft.batch_size]
                batch = build_batch([p for p, _ in chunk], [r for _, r in chunk], policy.tokenizer.pad_token_id)
                summed, _ = ens.logps(name, batch.to(policy.device), grad=True)
                loss = -summed.sum() / batch.response_mask.sum()  # mean NLL per response token
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                if progress:
                    progress.update(task, advance=1, description=f"member SFT {name} loss {loss.item():.3f}")
        _save_atomic(ens, name, path, base_model_path(cfg.model.name))
    policy.model.eval()
    lock.release()
    return paths


def _save_atomic(ens: Ensemble, name: str, path: Path, base_model: str) -> None:
    tmp = temp_dir(path.parent, f".{name}-")
    try:
        ens.save(tmp, [name], base_model=base_model)
        write_manifest(tmp / name)  # last: verified before every use
        replace_dir(tmp / name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
