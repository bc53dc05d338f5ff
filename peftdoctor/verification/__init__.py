"""`peftdoctor verify`: load base + adapter with the installed peft, merge, compare, save deployable.

Importing this package is cheap: torch, transformers and peft are imported inside the functions
that need them, so the light install can import it and fail only when verify actually runs.
"""
from peftdoctor.render.verify import render_json, render_text, to_dict
from peftdoctor.verification.result import Parity, Step, VerifyReport
from peftdoctor.verification.run import verify

__all__ = ["Parity", "Step", "VerifyReport", "render_json", "render_text", "to_dict", "verify"]
