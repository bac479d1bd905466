"""eofm.pretrain: configs, the training runtime and the objectives."""
