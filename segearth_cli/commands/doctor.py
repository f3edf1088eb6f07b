"""`segearth doctor [--smoke] [--json]`: what is installed, on one screen for a bug report.

Nothing here needs the network. ``--smoke`` runs the built-in tiny-random model end to end
on a small generated scene in a temporary folder (GeoTIFF, GeoPackage and GeoJSON through
the same code path as ``segearth query``) and exits 0 when every output came out right,
1 otherwise.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ..errors import EXIT_FAILURE
from . import options as opt


def _line(info: dict[str, Any]) -> str:
    if info.get("version") is None:
        return f"NOT USABLE: {info.get('error')}"
    parts = [str(info["version"])]
    for key, value in info.items():
        if key == "version" or value in (None, [], ""):
            continue
        if key == "gpus":
            value = "; ".join(value)
        parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts)


def render(facts: dict[str, Any]) -> str:
    rows = [("segearth", facts["segearth"]), ("python", facts["python"]), ("platform", facts["platform"])]
    for name in ("torch", "transformers", "huggingface_hub", "rasterio", "pyproj", "pyogrio", "geopandas", "shapely",
                 "numpy"):
        rows.append((name, _line(facts[name])))
    auto = facts["auto"]
    rows.append(("device auto", f"{auto['device']} ({auto.get('dtype', '?')})" if auto.get("device") else
                 f"NOT USABLE: {auto.get('error')}"))
    cache = facts["model_cache"]
    rows.append(("model cache", f"{cache['path']} ({cache['note']})"))
    rows.append(("hub access", "offline (HF_HUB_OFFLINE is set)" if cache["offline"] else "online allowed"))
    rows.append(("models", ", ".join(cache["models"])))
    for warning in cache["warnings"]:
        rows.append(("cache warning", warning))
    smoke = facts.get("smoke")
    if smoke is not None:
        rows.append(("smoke test", f"PASSED in {smoke['seconds']} s on {smoke.get('device')} "
                     "(tiny-random: GeoTIFF, GeoPackage, GeoJSON)"
                     if smoke["passed"] else f"FAILED: {'; '.join(smoke['problems'])}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def doctor_command(
    smoke: Annotated[bool, typer.Option("--smoke", help="Also run tiny-random end to end on a generated scene; "
                                        "exit 1 if it fails.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the text screen.")] = False,
    debug: opt.Debug = False,
) -> None:
    """Show versions, GPU, model cache and its permissions, for a bug report."""
    from ..diagnostics import collect, smoke_test

    facts = collect()
    if smoke:
        facts["smoke"] = smoke_test()
    if json_output:
        print(json.dumps(facts, ensure_ascii=False, indent=2))
    else:
        print(render(facts))
        # The JSON carries the traceback for a bug report; the screen shows it on request only.
        if smoke and debug and facts["smoke"].get("traceback"):
            print(facts["smoke"]["traceback"], file=sys.stderr)
    if smoke and not facts["smoke"]["passed"]:
        raise typer.Exit(EXIT_FAILURE)
