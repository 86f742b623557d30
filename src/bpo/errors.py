"""The one base class of the errors a user can fix; the CLI prints each as one ``error:`` line.

Anything else is a bug in bpo and keeps its traceback.
"""


class BpoError(Exception):
    """A fault the user can fix; the message says what, where and how."""


class Interrupted(BpoError):
    """Ctrl-C during a run; the message says how to continue (the CLI exits 130)."""


class ConfigError(BpoError, ValueError):
    """A config file or override is wrong; the message says where and what."""


class AwaitingLabels(Exception):
    """A human-labelled run stopped at a phase whose pairs wait for people (not a fault: the CLI exits 0)."""
