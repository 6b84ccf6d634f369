"""Model core for masked pretraining: patching, vocabularies, masking modes, the MAE model and checkpoints."""
