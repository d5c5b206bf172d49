"""Data: offline corpora of long real documents and the evaluation inputs built from them."""
