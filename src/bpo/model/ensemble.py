"""K LoRA members, their merge, and frozen snapshots, all on one base model.

PEFT keeps any number of named adapters on a single model, so the members
(``member0`` ... ``member{K-1}``), the merged behavior model (``behavior``), the SFT reference
(``sft``), an EMA reference (``ema``) and TR-DPO's reference (``tr``) are named LoRA states that share
one copy of the base weights. Switching adapter is a pointer change, not a copy.

Merging: the paper's code uses PEFT's ``linear`` combination, which scales each member's A and
B by sqrt(w) and sums them, so the product contains cross terms B_i A_j. ``exact`` (our default)
stacks the members into a rank K*r adapter whose delta-W is exactly (1/K) sum_i s_i B_i A_i.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from bpo.model.logprobs import SharedPromptBatch, TokenBatch, sequence_logps, shared_prompt_logps

MergeMethod = Literal["exact", "linear"]


class Ensemble:
    """Named LoRA adapters on one frozen base model; only members are ever trainable."""

    def __init__(self, peft_model: PeftModel, members: Sequence[str]):
        self.peft = peft_model
        self.members = list(members)
        self._fix_trainable()

    # ------------------------------------------------------------------ building

    @classmethod
    def create(cls, model: PreTrainedModel, lora: LoraConfig, k: int, seed: int = 0) -> Ensemble:
        """K fresh members with different random A (B starts at zero, so each starts as the base)."""
        names = [f"member{i}" for i in range(k)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = get_peft_model(model, lora, adapter_name=names[0])
            for name in names[1:]:
                peft_model.add_adapter(name, lora)
        return cls(peft_model, names)

    @classmethod
    def from_adapters(cls, model: PreTrainedModel, paths: Sequence[str | Path]) -> Ensemble:
        """Members initialised from saved PEFT adapters (the paper: K SFT runs with different seeds)."""
        names = [f"member{i}" for i in range(len(paths))]
        peft_model = PeftModel.from_pretrained(model, str(paths[0]), adapter_name=names[0], is_trainable=True)
        for name, path in zip(names[1:], paths[1:], strict=True):
            peft_model.load_adapter(str(path), adapter_name=name, is_trainable=True)
        return cls(peft_model, names)

    @property
    def adapters(self) -> list[str]:
        return list(self.peft.peft_config)

    def _layers(self) -> Iterator[LoraLayer]:
        return (m for m in self.peft.modules() if isinstance(m, LoraLayer))

    def _fix_trainable(self) -> None:
        """PEFT's set_adapter/add_adapter toggle requires_grad; members stay trainable, the rest frozen."""
        for layer in self._layers():
            for store in (layer.lora_A, layer.lora_B):
                for name, module in store.items():
                    module.requires_grad_(name in self.members)

    def disable_dropout(self, names: Sequence[str] | None = None) -> None:
        """Replace the LoRA dropout of ``names`` (all adapters by default) with the identity.

        ``model.eval()`` is not enough: PEFT builds a new ``nn.Dropout`` (in training mode) for
        every adapter added later, and ``add_weighted_adapter`` copies the members' dropout into
        the merged adapter. DAP training, sampling, reference scoring and evaluation all run
        without dropout (the paper), so a frozen adapter never gets one and the members lose
        theirs when DAP starts.
        """
        wanted = set(names) if names is not None else None
        for layer in self._layers():
            for name in list(layer.lora_dropout):
                if wanted is None or name in wanted:
                    layer.lora_dropout[name] = torch.nn.Identity()
        for name, config in self.peft.peft_config.items():
            if wanted is None or name in wanted:
                config.lora_dropout = 0.0

    def member_parameters(self, name: str) -> list[torch.nn.Parameter]:
        params = []
        for layer in self._layers():
            params += [layer.lora_A[name].weight, layer.lora_B[name].weight]
        return params

    # ------------------------------------------------------------------ using

    @contextlib.contextmanager
    def active(self, name: str | None) -> Iterator[PeftModel]:
        """Run the model under adapter ``name``, or the bare base model when ``name`` is None."""
        if name is None:
            with self.peft.disable_adapter():
                yield self.peft
            return
        if name not in self.peft.peft_config:
            raise KeyError(f"no adapter named {name!r}; have {self.adapters}")
        previous = self.peft.active_adapter
        self.peft.base_model.set_adapter(name)
        self._fix_trainable()
        try:
            yield self.peft
        finally:
            self.peft.base_model.set_adapter(previous)
            self._fix_trainable()

    def foldable(self, name: str) -> bool:
        """Adapter ``name`` is a plain LoRA of linear layers: :meth:`folded` can add it into the base weights."""
        layers = [layer for layer in self._layers() if name in layer.lora_A]
        plain = not any(name in layer.lora_embedding_A or layer.use_dora.get(name) for layer in self._layers())
        return bool(layers) and plain and not getattr(self.peft.peft_config[name], "lora_bias", False)

    def folds_exactly(self, name: str) -> bool:
        """Adapter ``name`` can be folded without changing the model: it is foldable and the base weights are fp32.

        W + delta-W rounded to bf16 (or fp16) drops every part of delta-W below half a unit in the last place
        of W: on SmolLM2 with trained quickstart members about half of delta-W's norm per layer
        (``benchmarks/sampler_logps.py``), so a folded bf16 model samples other tokens than the behavior model
        the loss uses. There the adapter runs unfolded (its low-rank path keeps delta-W whole).
        """
        weights = [layer.get_base_layer().weight for layer in self._layers() if name in layer.lora_A]
        return self.foldable(name) and all(w.dtype in (torch.float32, torch.float64) for w in weights)

    @contextlib.contextmanager
    def folded(self, name: str) -> Iterator[PeftModel]:
        """Run the model with adapter ``name`` folded into the base weights, for inference only.

        A frozen adapter (the behavior model inside a phase) need not be a separate low-rank
        path: W + delta-W is the same model, without two extra matmuls per layer and token (the
        behavior adapter has rank K*r). The base weights are copied first and copied back after,
        so they return bit for bit (unmerging by subtraction would not). Embedding and DoRA
        adapters are run unfolded (an embedding may be tied to the LM head). The sum is taken in fp32 and
        rounded once; in bf16/fp16 it is still not the adapter's model (:meth:`folds_exactly`).
        """
        if not self.foldable(name):
            with self.active(name) as model:
                yield model
            return
        layers = [layer for layer in self._layers() if name in layer.lora_A]
        saved = []
        try:
            with torch.no_grad():
                for layer in layers:
                    weight = layer.get_base_layer().weight
                    saved.append((weight, weight.detach().clone()))
                    weight.copy_(weight.float() + layer.get_delta_weight(name).float())
            with self.active(None) as model:
                yield model
        finally:
            with torch.no_grad():
                for weight, copy in saved:
                    weight.copy_(copy)

    def logps(
        self, name: str | None, batch: TokenBatch | SharedPromptBatch, grad: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed and mean response log-probs under adapter ``name`` (None: the base model)."""
        with self.active(name), torch.set_grad_enabled(grad):
            if isinstance(batch, SharedPromptBatch):
                return shared_prompt_logps(self.peft, batch)
            return sequence_logps(self.peft, batch)

    # ------------------------------------------------------------------ merge and snapshots

    def merge(self, into: str = "behavior", method: MergeMethod = "exact") -> None:
        """Write the 1/K merge of the members into the frozen adapter ``into``."""
        k = len(self.members)
        if method == "linear":
            if into in self.peft.peft_config:
                self.peft.delete_adapter(into)
            self.peft.base_model.add_weighted_adapter(self.members, [1.0 / k] * k, into, combination_type="linear")
            self.peft.peft_config[into].inference_mode = True
        elif method == "exact":
            base = self.peft.peft_config[self.members[0]]
            rank = sum(self.peft.peft_config[m].r for m in self.members)
            config = replace(base, r=rank, lora_alpha=rank, lora_dropout=0.0, use_rslora=False, inference_mode=True)
            self._ensure_adapter(into, config)
            with torch.no_grad():
                for layer in self._layers():
                    if into not in layer.lora_A:
                        continue
                    a = torch.cat([layer.lora_A[m].weight for m in self.members], dim=0)
                    b = torch.cat([layer.lora_B[m].weight * (layer.scaling[m] / k) for m in self.members], dim=1)
                    layer.lora_A[into].weight.copy_(a)
                    layer.lora_B[into].weight.copy_(b)
                    layer.scaling[into] = 1.0
        else:
            raise ValueError(f"unknown merge method {method!r}: use exact or linear")
        self.disable_dropout([into])
        self._fix_trainable()

    def snapshot(self, source: str, into: str) -> None:
        """Copy adapter ``source`` into frozen adapter ``into``; later training cannot change it."""
        config = replace(self.peft.peft_config[source], lora_dropout=0.0, inference_mode=True)
        self._ensure_adapter(into, config)
        with torch.no_grad():
            for layer in self._layers():
                if source in layer.lora_A:
                    layer.lora_A[into].weight.copy_(layer.lora_A[source].weight)
                    layer.lora_B[into].weight.copy_(layer.lora_B[source].weight)
                    layer.scaling[into] = layer.scaling[source]
        self.disable_dropout([into])
        self._fix_trainable()

    def ema_update(self, source: str, into: str, alpha: float) -> None:
        """into <- (1 - alpha) into + alpha source, factor by factor (the public code's EMA is in
        parameter space too); ``into`` must have the shape of ``source``."""
        with torch.no_grad():
            for layer in self._layers():
                if source in layer.lora_A:
                    layer.lora_A[into].weight.lerp_(layer.lora_A[source].weight, alpha)
                    layer.lora_B[into].weight.lerp_(layer.lora_B[source].weight, alpha)

    def mix(self, source: str, into: str, alpha: float) -> None:
        """into <- alpha * source + (1 - alpha) * into, on delta-W and exactly (TR-DPO's soft update).

        A sum of low-rank updates is not low-rank, so ``into`` is a dense adapter: per layer rank
        min(in, out), an identity on the smaller side and delta-W itself on the other (B @ I and
        I @ A are exact). It is created from ``source`` (alpha is then 1) when it does not exist.
        """
        layers = {
            n.removeprefix("base_model.model."): m for n, m in self.peft.named_modules() if isinstance(m, LoraLayer)
        }
        if into not in self.peft.peft_config:
            ranks = {re.escape(n): min(m.in_features, m.out_features) for n, m in layers.items() if source in m.lora_A}
            base = self.peft.peft_config[source]
            config = replace(
                base, r=1, lora_alpha=1, rank_pattern=ranks, alpha_pattern=dict(ranks), lora_dropout=0.0,
                use_rslora=False, inference_mode=True,
            )  # fmt: skip
            self.peft.add_adapter(into, config)
            alpha = 1.0
        with torch.no_grad():
            for layer in layers.values():
                if source not in layer.lora_A:
                    continue
                new = layer.get_delta_weight(source).float() * alpha
                if alpha != 1.0:
                    new += layer.get_delta_weight(into).float() * (1.0 - alpha)
                a, b = layer.lora_A[into].weight, layer.lora_B[into].weight
                if a.shape[0] == layer.in_features:  # A = I (in x in), B = delta-W (out x in)
                    a.copy_(torch.eye(a.shape[0], dtype=a.dtype))
                    b.copy_(new)
                else:  # B = I (out x out), A = delta-W
                    b.copy_(torch.eye(b.shape[0], dtype=b.dtype))
                    a.copy_(new)
                layer.scaling[into] = 1.0
        self.disable_dropout([into])
        self._fix_trainable()

    def _ensure_adapter(self, name: str, config: LoraConfig) -> None:
        existing = self.peft.peft_config.get(name)
        if existing is not None and existing.r == config.r:
            return
        if existing is not None:
            self.peft.delete_adapter(name)
        self.peft.add_adapter(name, config)

    # ------------------------------------------------------------------ saving

    def save(self, folder: str | Path, names: Sequence[str] | None = None, base_model: str | None = None) -> None:
        """Each adapter in ``folder/<name>`` in standard PEFT format (loadable by PeftModel.from_pretrained).

        ``base_model`` is recorded as the adapter's ``base_model_name_or_path``, so a reader can
        refuse to apply it to another model.
        """
        names = list(names or self.adapters)
        if "default" in names:  # PEFT writes "default" to folder itself, not folder/default
            raise ValueError("adapter name 'default' is reserved")
        for name in names:
            bad = [n for n, p in self.peft.named_parameters() if f".{name}." in n and not torch.isfinite(p).all()]
            if bad:  # a NaN adapter must never reach disk, where it would be evaluated or resumed from
                raise ValueError(f"adapter {name!r} has non-finite weights ({bad[0]}); not saved")
            config = self.peft.peft_config[name]
            if base_model is not None:
                config.base_model_name_or_path = base_model
            # "auto" would look the base model up (on the Hub, for a name) at every save to see if the
            # vocabulary grew; bpo never resizes it, so only targeted embeddings are saved
            embeddings = "auto" if "embed" in str(config.target_modules) else False
            self.peft.save_pretrained(str(folder), selected_adapters=[name], save_embedding_layers=embeddings)

    def load_state(self, folder: str | Path, names: Sequence[str]) -> None:
        """Restore adapter weights saved by :meth:`save` into existing adapters of the same shape."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        for name in names:
            state = load_file(str(Path(folder) / name / "adapter_model.safetensors"))
            set_peft_model_state_dict(self.peft, state, adapter_name=name)
        self._fix_trainable()
