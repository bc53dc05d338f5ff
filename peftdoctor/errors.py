"""The exceptions that end a command, each with its one-line message; the CLI maps them to exit codes."""
from __future__ import annotations


class UnusableInput(Exception):
    """The input cannot be checked at all (exit 2); the message is one line for the user."""
