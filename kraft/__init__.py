"""The metadata quorum: metadata records, the metadata image, the controller's decisions,
and the shell that makes the record log durable (a local journal on a single node; a
pysyncobj Raft group across several)."""
