"""People label each phase's pairs: the human annotator, the label queue and store, the page, files."""

from bpo.human.annotator import HumanAnnotator

__all__ = ["HumanAnnotator"]
