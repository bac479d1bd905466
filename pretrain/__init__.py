"""eofm.pretrain."""
