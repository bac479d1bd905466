"""eofm.models."""
