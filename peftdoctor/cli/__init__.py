"""The command line: typer commands that parse options, call an operation, render and pick the exit code."""
from peftdoctor.cli.app import app, main

__all__ = ["app", "main"]
