"""Run inside a side-by-side peft env (or the installed one): `verify --load-only`'s answer under that peft.

argv: base directory, then adapter directories. Prints one JSON object (its last line): {adapter: the load-only
result as `verify --format json` writes it under "load"}, each from that release's PeftModel.from_pretrained.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")

import transformers  # noqa: E402

from peftdoctor.verification.load_only import load_only  # noqa: E402  (first: it imports the renderers)
from peftdoctor.render.verify import load_dict  # noqa: E402

transformers.logging.set_verbosity_error()
print(json.dumps({adapter: load_dict(load_only(adapter, sys.argv[1])) for adapter in sys.argv[2:]}))
