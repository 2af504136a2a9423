"""The edge agent: real-time student inference, sampling for the trainer, model swaps."""
