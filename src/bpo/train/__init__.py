"""Training: the run, the BPO loop and its pieces (phases, step, losses, checkpoint, ledger), member SFT and bpo rm."""
