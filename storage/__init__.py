"""Storage: the record batch format and the partition logs of one node, on LMDB."""
