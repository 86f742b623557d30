"""The policy: loading and prompt format, the LoRA ensemble and its merge, log-probs, generation backends."""
