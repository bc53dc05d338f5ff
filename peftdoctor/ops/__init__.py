"""The operations behind the commands: plain functions from an Adapter (or a path) to a frozen result."""
