"""Findings for directories that are not PEFT adapters: say what they are and what to do."""
from __future__ import annotations

from peftdoctor.model.adapter import CONFIG_NAME, Adapter
from peftdoctor.model.findings import Finding
from peftdoctor.model.formats import FORMAT_BY_KIND
from peftdoctor.rules.registry import rule


def kind_findings(adapter: Adapter) -> list[Finding]:
    where = adapter.display
    if adapter.kind == "empty":
        return [rule("PD001").finding(f"{where} is empty", "point peftdoctor at the directory "
                                      "save_pretrained() wrote the adapter to")]
    if adapter.kind == "full-model":
        return [rule("PD002").finding(
            f"{where} holds a full model (config.json and model weights), not a PEFT adapter",
            "load it with transformers' AutoModel* classes; check only adapter directories", file="config.json")]
    if adapter.kind == "medusa":
        return [rule("PD003").finding(
            f"{where} is a Medusa heads checkpoint, which peft cannot load",
            "load it with the Medusa code that trained it; PeftModel does not know Medusa heads")]
    other = FORMAT_BY_KIND.get(adapter.kind)
    if other is not None:
        return [rule("PD009").finding(f"{where} is {other.what}, not a PEFT adapter", other.next_step)]
    if adapter.kind == "adapters-below":
        shown = ", ".join(adapter.nested[:5]) + (" ..." if len(adapter.nested) > 5 else "")
        return [rule("PD005").finding(
            f"{where} has no {CONFIG_NAME} but {len(adapter.nested)} subfolder(s) do: {shown}",
            f"check one of them, e.g. `peftdoctor check {adapter.directory / adapter.nested[0]}`")]
    return [rule("PD004").finding(f"{where} has no {CONFIG_NAME}",
                                  "save the adapter with PeftModel.save_pretrained(), which writes it",
                                  file=CONFIG_NAME)]
