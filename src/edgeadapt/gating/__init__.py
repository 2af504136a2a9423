"""The gating service of a ModelZoo (``python -m edgeadapt.gating``): RECL's model selector over
the zoo on the ModelZoo's claim, served to trainers over gRPC (``proto/edgeadapt/gating/v1``)."""
