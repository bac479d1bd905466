"""eofm.data_shards."""
