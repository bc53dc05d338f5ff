"""For the scripts that run SGLang's own code from a released wheel (tests/sglang_host.py, tests/sglang_pool.py):
make the top-level `sglang` package an empty package over the release's sglang/ directory, so that
sglang/__init__.py (the front-end language API, which imports triton, PIL and orjson) does not run; every
module imported under it afterwards is the release's own file, unchanged. Import this module first."""
from __future__ import annotations

import sys
import types
from importlib import util

spec = util.find_spec("sglang")
package = types.ModuleType("sglang")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["sglang"] = package
