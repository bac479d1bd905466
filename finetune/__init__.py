"""eofm.finetune."""
