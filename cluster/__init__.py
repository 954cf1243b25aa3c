"""The node: config, wire protocol, request handlers, and the client API and CLI."""
