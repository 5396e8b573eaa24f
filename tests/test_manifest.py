"""manifest.json agrees with the code: RunConfig, the real CLI, the trigger service, the host, the docs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from kern_finetune import service
from kern_finetune.service.trigger import validate_trigger
from kern_finetune.cli import build_parser
from kern_finetune.config import RunConfig

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "manifest.json").read_text())
VARIABLES: dict[str, dict[str, Any]] = MANIFEST["integratorInputs"]["variables"]
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
HINTS = typing.get_type_hints(RunConfig)
DEFAULTS = RunConfig()
_TYPES = {"integer": int, "float": float, "string": str, "list[string]": list, "boolean": bool}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    if name not in sub.choices:
        pytest.fail(f"`kern-finetune {name}` is not registered")
    return sub.choices[name]


def _option_actions(name: str) -> dict[str, argparse.Action]:
    return {s: a for a in _subparser(name)._actions for s in a.option_strings}  # noqa: SLF001


def _hint_types(hint: Any) -> set[type]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return {list}
    if args:
        return set().union(*(_hint_types(a) for a in args)) - {type(None)}
    return {hint}


def test_top_level_keys_are_camel_case_and_present() -> None:
    for key in ("name", "description", "moduleType", "executionType", "minRefineryVersion", "availableFor",
                "integratorInputs", "triggers", "hostEndpoints"):
        assert MANIFEST.get(key), key
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", k) for k in MANIFEST), list(MANIFEST)
    assert re.fullmatch(r"\d+\.\d+\.\d+", MANIFEST["minRefineryVersion"])
    assert "refinery" in MANIFEST["availableFor"]
    assert VARIABLES


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_integrator_input_maps_to_runconfig_and_run_option(name: str) -> None:
    var = VARIABLES[name]
    for key in ("selectionType", "type", "defaultValue", "description", "configField", "cliOption"):
        assert key in var, (name, key)
    field = var["configField"]
    assert field in FIELDS, f"{name}: {field} is not a RunConfig field"
    assert field != "cache_dir", "cache_dir is the service's business, not an integrator input"
    # the default is RunConfig's default
    assert var["defaultValue"] == getattr(DEFAULTS, field), name
    assert bool(var.get("optional")) == (getattr(DEFAULTS, field) is None), name
    # the type is the field's type
    assert _TYPES[var["type"]] in _hint_types(HINTS[field]) or (
        var["type"] == "float" and float in _hint_types(HINTS[field])
    ), (name, var["type"], HINTS[field])
    # a real `kern-finetune run` option, writing the same field, with the same default and choices
    actions = _option_actions("run")
    assert var["cliOption"] in actions, f"{name}: `kern-finetune run` has no {var['cliOption']}"
    action = actions[var["cliOption"]]
    assert action.dest == field, (name, action.dest)
    assert action.default == getattr(DEFAULTS, field), (name, action.default)
    if var["type"] == "boolean":
        assert isinstance(action, argparse.BooleanOptionalAction), name
        assert var["selectionType"] == "choice" and var["allowedValues"] == [True, False], name
    elif action.choices is not None or "allowedValues" in var:
        assert list(var.get("allowedValues", [])) == list(action.choices or []), name
        assert var["selectionType"] == "choice"
        assert var["defaultValue"] in var["allowedValues"]


def test_every_run_option_of_runconfig_is_an_input() -> None:
    """Every RunConfig field is a `run` option, and every one but cache_dir (the service's) a manifest input."""
    covered = {v["configField"] for v in VARIABLES.values()}
    dests = {a.dest for a in _subparser("run")._actions if a.option_strings} & set(FIELDS)  # noqa: SLF001
    assert dests == set(FIELDS)
    assert dests - covered == {"cache_dir"}


def test_the_committed_inputs_are_the_ones_runconfig_makes() -> None:
    """manifest.json's inputs are generated from RunConfig's field metadata; after changing a run option,
    `python scripts/update_manifest.py` rewrites them."""
    from kern_finetune.config import manifest_variables

    expected = manifest_variables()
    assert list(VARIABLES) == list(expected), "run python scripts/update_manifest.py"
    for name, var in expected.items():
        assert VARIABLES[name] == var, f"{name} differs from RunConfig: run python scripts/update_manifest.py"
        assert name == var["configField"].upper()  # one name per option
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_manifest.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_inputs_with_their_defaults_make_a_valid_trigger_and_config() -> None:
    options = {v["configField"]: v["defaultValue"] for v in VARIABLES.values()}
    config = RunConfig.from_dict(options).validate()
    assert dataclasses.replace(config, cache_dir=DEFAULTS.cache_dir) == DEFAULTS
    project_id, checked, force, min_new = validate_trigger({"project_id": "p1", "options": options})
    assert (project_id, checked, force, min_new) == ("p1", options, False, 1)
    example = MANIFEST["triggers"]["webhook"]["body"]
    validate_trigger({**example, "project_id": "p1"})


def test_webhook_trigger_matches_the_service() -> None:
    hook = MANIFEST["triggers"]["webhook"]
    sig = hook["signature"]
    assert sig["header"] == service.SIGNATURE_HEADER
    assert sig["algorithm"] == "HMAC-SHA256" and sig["signedPayload"] == "<t>.<raw body>"
    assert sig["toleranceSeconds"] == service.TOLERANCE_S
    assert service.SECRET_ENV in sig["secretFrom"] and "--secret-file" in sig["secretFrom"]
    assert hook["maxBodyBytes"] == service.MAX_BODY_BYTES
    app = service.create_app(store=None, secret=b"x" * 16)  # type: ignore[arg-type] - routes only
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ())}
    assert (hook["method"], hook["path"]) in routes
    assert ("GET", hook["statusPath"].replace("{id}", "{job_id}")) in routes
    assert ("GET", hook["healthPath"]) in routes
    # the documented command parses with the real CLI
    build_parser().parse_args(shlex.split(hook["command"])[1:])


def test_cron_trigger_is_a_real_sync_command_and_matches_the_docs() -> None:
    cron = MANIFEST["triggers"]["cron"]
    assert len(cron["schedule"].split()) == 5
    argv = shlex.split(cron["command"])
    assert argv[:2] == ["kern-finetune", "sync"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "sync" and args.task == "Topic"
    docs = (ROOT / "docs" / "triggers.md").read_text()
    m = re.search(r"<!-- snippet: crontab -->\n```cron\n(.*?)\n```", docs, re.S)
    assert m
    line = m.group(1).strip()
    fields = line.split(None, 5)
    assert " ".join(fields[:5]) == cron["schedule"]
    # `cd /path && .venv/bin/kern-finetune sync ... >> sync.log 2>&1`: the same command, parseable
    command = fields[5].split("&&", 1)[1].split(">>", 1)[0]
    cron_argv = shlex.split(command)
    assert cron_argv[0].endswith("kern-finetune") and cron_argv[1] == "sync"
    build_parser().parse_args(cron_argv[1:])


def test_host_endpoints_are_refinery_and_the_local_host_serves_them(tmp_path: Path) -> None:
    """Every endpoint the manifest names is refinery's own (in the facts read from refinery's sources; no refinery
    has a route that takes vectors, so nothing promises one) and the local host serves it."""
    from kern_finetune.host import serve_in_thread

    facts = re.sub(r"/\s+", "/", shared_file("docs/refinery-api.md").read_text())  # paths wrapped over lines
    endpoints = MANIFEST["hostEndpoints"]
    names = {e["name"] for e in endpoints}
    assert {"loginFlow", "loginSubmit", "project", "export", "searchRecordsBySimilarity", "browserLoginFlow",
            "createEmbedding"} <= names
    assert "pushExtension" not in MANIFEST and "push" not in MANIFEST["description"]
    for e in endpoints:
        assert e["source"] == "refinery", e
        if not e["path"].startswith("{"):
            assert e["path"] in facts, f"{e['name']}: {e['path']} is not among refinery's facts"
    assert "snapshot" in MANIFEST["description"] and "model door" in MANIFEST["description"]

    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"running_id": str(i), "Title": f"t{i}", "__Topic__MANUAL": None} for i in range(3)]))
    with serve_in_thread(export, data_dir=tmp_path / "host", user_name="me@example.com",
                         password="manifest-pw-1234") as host:
        served = {(m, r.path) for r in host.app.routes for m in getattr(r, "methods", ())}
    for e in endpoints:
        if not e["path"].startswith("{"):  # the login submit URL is whatever the flow's ui.action says
            assert (e["method"], e["path"]) in served, f"the local host lacks {e['method']} {e['path']}"
