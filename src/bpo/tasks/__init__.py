"""Tasks: prompt sources registered by name (``data.train=NAME``), each with its own exact judge if it has one.

The embedded quickstart lives here; a new task is one module that registers its prompts (and its
judge, as an annotator kind) and is imported below.
"""

from bpo.tasks import quickstart

__all__ = ["quickstart"]
