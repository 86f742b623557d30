"""bpo: online preference alignment with BPO (behavior-anchored DPO/IPO/SLiC) and LoRA ensembles."""

__version__ = "0.1.0"
