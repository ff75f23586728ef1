"""The bench's printed table (markdown), built from the JSON figures."""

from __future__ import annotations


def _f(value, digits=2, suffix="") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def table(results: dict) -> str:
    lines = []
    patch = results.get("patch_math")
    if patch:
        lines += [
            "",
            "Patch math (ours ÷ ComfyUI native; median over SDXL shapes × {full, lowvram fp16, bf16})",
            "| method | time ratio | worst case | ÷ add floor (all / full load) | peak mem ratio | "
            "our peak (× W fp32, all / full load) | native failed |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, s in patch.items():
            if not isinstance(s, dict) or "floor_ratio" not in s:
                continue
            lines.append(
                f"| {method} | {_f(s['ratio'])} | {_f(s['worst_ratio'])} | {_f(s['floor_ratio'])} / "
                f"{_f(s['floor_ratio_full'])} | {_f(s['peak_mem_ratio'])} | {_f(s['ours_peak_w_max'])} / "
                f"{_f(s['ours_peak_w_max_full'])} | {s['native_failed_cases']}/{s['cases']} |"
            )
    prefetch = results.get("prefetch")
    if prefetch:
        lines += ["", "Dynamic VRAM per-forward patch (stage + rebuild + copy + math; ours ÷ native; fp16 and bf16)"]
        if "skipped" in prefetch:
            lines.append(f"skipped: {prefetch['skipped']}")
        else:
            lines += ["| method | time ratio | worst case | native failed |", "|---|---|---|---|"]
            for method, s in prefetch["methods"].items():
                lines.append(
                    f"| {method} | {_f(s['ratio'])} | {_f(s['worst_ratio'])} | "
                    f"{s['native_failed_cases']}/{s['cases']} |"
                )
    whole = results.get("whole_model")
    if whole:
        lines += [
            "",
            f"Whole model: {whole.get('model', '')}",
            "| method | patch_model ratio | ours s | native s | peak mem ratio | transient mem ratio | "
            "low-VRAM step ratio (no adapter) | low-VRAM pass ratio (ours / native / casts s) | "
            "native failed layers |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, s in whole.get("methods", {}).items():
            lines.append(
                f"| {method} | {_f(s.get('patch_ratio'))} | {_f(s.get('ours_s'))} | {_f(s.get('native_s'))} "
                f"| {_f(s.get('peak_mem_ratio'))} | {_f(s.get('transient_mem_ratio'))} | "
                f"{_f(s.get('lowvram_step_ratio'))} ({_f(s.get('lowvram_step_bound'))}) | "
                f"{_f(s.get('lowvram_pass_ratio'))} ({_f(s.get('ours_pass_s'), 3)} / "
                f"{_f(s.get('native_pass_s'), 3)} / {_f(s.get('cast_pass_s'), 3)}) | "
                f"{s.get('native_failed_weights')}/{s.get('weights')} |"
            )
        bypass = whole.get("bypass")
        if bypass:
            lines.append(
                f"Bypass (LoRA r32, every layer): step ÷ merged step {_f(bypass.get('forward_ratio'))}; "
                f"load ÷ merged load {_f(bypass.get('load_ratio'))}; load peak "
                f"{_f(bypass.get('load_bypass_peak_gb'), 3)} GB vs merged "
                f"{_f(bypass.get('load_merged_peak_gb'), 3)} GB; max rel. diff vs merged (fp16 weights) "
                f"{_f(bypass.get('max_rel_diff'), 6)}"
            )
    for part in ("inspect", "conversion", "training"):
        data = results.get(part)
        if data:
            shown = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
            lines += [
                "",
                f"{part}: " + ", ".join(f"{k}={_f(v, 4) if isinstance(v, float) else v}" for k, v in shown.items()),
            ]
            for key, value in data.items():
                if isinstance(value, dict):
                    lines.append(
                        f"  {key}: "
                        + ", ".join(f"{k}={_f(v, 4) if isinstance(v, float) else v}" for k, v in value.items())
                    )
    return "\n".join(lines)
