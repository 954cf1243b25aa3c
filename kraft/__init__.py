"""The metadata quorum: metadata records, the metadata image, the controller's decisions,
and the pysyncobj Raft shell that makes the record log durable and replicated."""
