"""Run inside a side-by-side peft env: save configs made by that release's own classes.

argv: one JSON list of [directory, config class name, keyword arguments].
"""
import json
import sys

import peft

for directory, class_name, kwargs in json.loads(sys.argv[1]):
    getattr(peft, class_name)(**kwargs).save_pretrained(directory)
