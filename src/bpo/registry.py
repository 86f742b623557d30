"""The parts a user plugs in by name: annotator kinds, tasks, generation backends, losses and reference rules
(PEFT's ``register_peft_method``).

Each registry is the only list of its parts. A part registers itself where it is defined
(``bpo.annotators``, ``bpo.human``, ``bpo.tasks``, or a user's package), and the config checks a
name against the registry. Built-in parts load the first time a registry is read, by module name,
and so do installed plugins (the ``bpo.plugins`` entry-point group): that is how the config, a base
module, sees parts defined above it without importing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from bpo.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, setting: str, builtins: tuple[str, ...]):
        self.setting, self.builtins = setting, builtins
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry  # a plugin may replace a built-in on purpose: the last one wins
        return entry

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the modules below register while they load
        for module in self.builtins:
            importlib.import_module(module)
        for plugin in entry_points(group="bpo.plugins"):
            plugin.load()

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The part ``name``; an unknown name is a :class:`ConfigError` that lists the known ones."""
        self._load()
        if name not in self._entries:
            raise ConfigError(f"{self.setting} = {name!r}: unknown; known: {', '.join(self.names())}")
        return self._entries[name]


@dataclass(frozen=True)
class AnnotatorKind:
    """What ``annotator.kind=NAME`` is: how to build it and what the rest of bpo needs to know about it."""

    build: Callable[[Any], Any]  # config -> the annotator
    help: str  # one line for `bpo config keys`
    per_response: bool = True  # gives a score per response (best-of-n best_worst, scores in evaluation)
    deferred: bool = False  # answers arrive later (people): a run stops at each phase (bpo.annotators.Deferred)
    task: str | None = None  # judges only this task's prompts (an exact judge of generated data)
    model_key: str = ""  # section.key of the model its verdicts come from (named in reports and model cards)
    label: Callable[[Any], str] | None = None  # annotator config -> how `bpo compare` names it (default: the kind)
    ledger_keys: tuple[
        str, ...
    ] = ()  # annotator.* (or judge.*) keys that change its verdicts (the ledger's fingerprint)
    check: Callable[[Any], None] | None = None  # config -> refuse, before anything loads
    report: Callable[[dict[str, list[dict]]], list[str]] | None = None  # runs by method -> `bpo compare` lines


@dataclass(frozen=True)
class Task:
    """A prompt source registered by name: ``data.train=NAME`` (or sft, eval) generates its records."""

    prompts: Callable[[Any, str, int], list]  # (data config, role, n) -> prompt records
    what: str  # what its prompts are, for messages: "the embedded task's posts"


@dataclass(frozen=True)
class BackendKind:
    """What ``sampling.backend=NAME`` is: how to build it over the policy, and what it needs from the config."""

    build: Callable[..., Any]  # (policy, ensemble, config) -> a bpo.model.sampling.Backend
    help: str
    check: Callable[[Any], None] | None = None  # config -> refuse, before anything loads


ANNOTATOR_KINDS: Registry[AnnotatorKind] = Registry("annotator.kind", ("bpo.annotators", "bpo.human", "bpo.tasks"))
TASKS: Registry[Task] = Registry("data source", ("bpo.tasks",))
BACKENDS: Registry[BackendKind] = Registry("sampling.backend", ("bpo.model",))
LOSSES: Registry[Any] = Registry("train.loss", ("bpo.train.losses",))  # bpo.train.losses.Loss
REFERENCES: Registry[Any] = Registry("train.reference", ("bpo.train.references",))  # ...references.ReferenceRule
