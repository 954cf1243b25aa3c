"""The wire protocol shared by the node and the client: framing, API shapes, error codes."""
