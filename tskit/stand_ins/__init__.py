"""Model files for `tskit.testing.stand_in_archive`: small models of the right shape for each task (random
weights), so a new handler can be tested before a trained model exists. Each file is an archive's
`--model-file`: torch and torchvision only, one top-level nn.Module buildable with no arguments."""
