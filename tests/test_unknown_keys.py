"""Keys a target release does not know: the no-op ones are one finding, the meaning-bearing ones
keep their own, and a release that raises on unknown keys still makes it an error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from peftdoctor.model.findings import Severity
from peftdoctor.ops.check import check
from tests.adapters import edited_copy

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ROOT / "fixtures" / "tiny-llama-lora"  # saved by peft 0.21.2: 17 keys 0.13.2 does not know, all no-ops


def adapter(tmp_path: Path, **changes: Any) -> Path:
    return edited_copy(CLEAN, tmp_path / "adapter", changes, indent=2, newline=True)


def test_clean_adapter_for_an_older_release_gets_one_noop_finding() -> None:
    report = check(str(CLEAN), peft="0.13.2")
    unknown = [f for f in report.findings if f.code in ("PD105", "PD106", "PD107")]
    assert len(unknown) == 1, [f.message for f in unknown]  # was 17 two-line PD105 errors
    finding = unknown[0]
    assert finding.code == "PD105" and finding.severity.value == "error"  # 0.13.2 raises: loading does fail
    assert finding.message.startswith("17 keys unknown to peft 0.13.2 are no-ops")
    assert "`peftdoctor fix --peft 0.13.2` drops them" in finding.fix
    config = json.loads((CLEAN / "adapter_config.json").read_text())
    from peftdoctor.peft import releases

    known = releases.load(releases.parse_version("0.13.2")).fields("LORA")
    assert all(key in finding.message for key in config if key not in known)


def test_meaning_bearing_keys_keep_their_own_finding(tmp_path: Path) -> None:
    report = check(str(adapter(tmp_path, use_dora=True)), peft="0.8.2")
    per_key = [f for f in report.findings if f.code == "PD105" and f.key == "use_dora"]
    grouped = [f for f in report.findings if f.code == "PD105" and f.key is None]
    assert len(per_key) == 1 and "loading fails" in per_key[0].message
    assert len(grouped) == 1 and "use_dora" not in grouped[0].message


def test_release_that_drops_unknown_keys_gets_one_info(tmp_path: Path) -> None:
    report = check(str(CLEAN), peft="0.14.0")
    noop = [f for f in report.findings if f.code == "PD107"]
    assert len(noop) == 1 and noop[0].severity.value == "info"
    assert not report.fails_at(Severity.ERROR)


def test_a_single_noop_key_is_said_on_its_own(tmp_path: Path) -> None:
    config = json.loads((CLEAN / "adapter_config.json").read_text())
    from peftdoctor.peft import releases

    known = releases.load(releases.parse_version("0.13.2")).fields("LORA")
    keep_one = {k: ... for k in config if k not in known and k != "use_qalora"}
    target = tmp_path / "adapter"
    shutil.copytree(CLEAN, target)
    (target / "adapter_config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in keep_one}))
    found = [f for f in check(str(target), peft="0.13.2").findings if f.code == "PD105"]
    assert [f.key for f in found] == ["use_qalora"]
