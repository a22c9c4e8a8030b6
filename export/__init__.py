"""Export models and build self-contained TorchServe archives (`.mar`)."""
