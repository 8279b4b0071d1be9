"""Bad configs, generated from the config schema: every field of every section gets invalid values
(wrong type, out of range, unknown key; the entries under `evaluate.out_of_domain` too), given through
`--set` and through a YAML file, to every command that reads the config. Each must exit 2 with one
message naming the field and the source, no traceback, and nothing written.

The cases run in-process through `s2s2.cli.run` (a subprocess each would take hours); a few run as
real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from s2s2.cli import run
from s2s2.pipeline.config.data import DATA_MODELS
from s2s2.pipeline.config.project import ProjectConfig

REPO = Path(__file__).resolve().parents[1]
NOT_A_NUMBER = "abc"


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_model_union(annotation: Any) -> bool:
    members = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
               for a in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Union else []
    return bool(members) and all(isinstance(m, type) and issubclass(m, BaseModel) for m in members)


def _range_violations(metadata: list[Any], number: type) -> list[Any]:
    """Values just outside each bound the field declares (ge, gt, le, lt, min_length)."""
    bad: list[Any] = []
    step = 1 if number is int else 0.5
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            bad.append(item.ge - step)
        elif isinstance(item, annotated_types.Gt):
            bad.append(item.gt)
        elif isinstance(item, annotated_types.Le):
            bad.append(item.le + step)
        elif isinstance(item, annotated_types.Lt):
            bad.append(item.lt)
        elif isinstance(item, annotated_types.MinLen):
            bad.append([])
    return bad


Case = tuple[tuple[str, ...], Any, dict[tuple[str, ...], Any]]  # key path, invalid value, other keys it needs


def bad_values(model: type[BaseModel], prefix: tuple[str, ...]) -> list[Case]:
    """(key path, invalid value, {}) for every field of `model` and its nested sections, and an unknown
    key in each section; a data section (a union, one model per adapter) is walked for every adapter."""
    cases: list[Case] = [((*prefix, "no_such_key"), 1, {})]
    for name, field in model.model_fields.items():
        key = (*prefix, name)
        annotation = _strip_optional(field.annotation)
        origin = typing.get_origin(annotation)
        if _is_model_union(annotation):  # the data section: one model per adapter
            cases += [(key, 5, {}), *data_values(key)]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cases += [(key, 5, {}), *bad_values(annotation, key)]
        elif origin is typing.Literal:
            cases.append((key, "no-such-choice", {}))
        elif annotation is bool:
            cases.append((key, "maybe", {}))
        elif annotation in (int, float):
            values = [NOT_A_NUMBER, *_range_violations(field.metadata, annotation), *([1.5] if annotation is int else [])]
            cases += [(key, value, {}) for value in values]
        elif annotation is str or annotation is Path:
            cases.append((key, [1, 2], {}))
        elif origin in (list, tuple):
            cases += [(key, 5, {}), *((key, v, {}) for v in _range_violations(field.metadata, int))]
            item = _strip_optional(typing.get_args(annotation)[0])
            if isinstance(item, type) and issubclass(item, BaseModel):
                cases.append((key, [{"no_such_key": 1}], {}))
            elif item in (int, float):
                cases.append((key, [NOT_A_NUMBER], {}))
        elif origin is dict:
            cases.append((key, 5, {}))
        else:  # a field type this generator does not know yet: extend it rather than skip the field
            raise AssertionError(f"no invalid value known for {'.'.join(key)}: {field.annotation}")
    return cases


def data_values(prefix: tuple[str, ...]) -> list[Case]:
    """Bad values for the fields of every data adapter's model (each field once, under the first adapter
    that has it), with `adapter` set to that adapter."""
    cases: list[Case] = [((*prefix, "adapter"), "no-such-adapter", {})]
    seen: set[tuple[str, ...]] = set()
    for adapter, model in DATA_MODELS.items():
        for key, value, _ in bad_values(model, prefix):
            if key[len(prefix)] != "adapter" and (key, json.dumps(value)) not in seen:
                seen.add((key, json.dumps(value)))
                cases.append((key, value, {(*prefix, "adapter"): adapter}))
    return cases


OUT_OF_DOMAIN = ("evaluate", "out_of_domain", "ood")
SCHEMA_CASES = bad_values(ProjectConfig, ()) + [(OUT_OF_DOMAIN, 5, {})] + data_values(OUT_OF_DOMAIN)


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Every command that reads the config, with the arguments it needs otherwise."""
    return {"data prepare": ["data", "prepare"], "data show": ["data", "show", "--out", str(tmp / "x.png")],
            "stack init": ["stack", "init"], "stack inspect": ["stack", "inspect"], "finetune": ["finetune"],
            "generate": ["generate"], "train": ["train"], "evaluate": ["evaluate"], "report": ["report"]}


def _nested(items: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in items.items():
        node = tree
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = value
    return tree


def _check(argv: list[str], key: tuple[str, ...], source: str, capsys: pytest.CaptureFixture) -> str | None:
    """None if `s2s2 ARGV` refused the value as it must; otherwise what went wrong."""
    status = run(argv)
    err = capsys.readouterr().err
    dotted = ".".join(key)
    if status != 2:
        return f"exit {status}: {err.strip()[-300:]}"
    if "Traceback" in err or not err.startswith("error: "):
        return f"not one message: {err[-300:]}"
    named = [line for line in err.splitlines() if dotted in line]
    if not named or not any(source in line for line in named):
        return f"field or source not named: {err.strip()}"
    return None


@pytest.mark.parametrize("command", list(_commands(Path("."))))
def test_every_bad_field_through_set_and_yaml_exits_2(command: str, tmp_path: Path, monkeypatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("S2S2_DEBUG", raising=False)
    base = _commands(tmp_path)[command]
    failures: list[str] = []
    for i, (key, value, context) in enumerate(SCHEMA_CASES):
        text = json.dumps(value)  # JSON is YAML: the value reaches the config as this Python value
        item = f"{'.'.join(key)}={text}"
        needed = [word for k, v in context.items() for word in ("--set", f"{'.'.join(k)}={json.dumps(v)}")]
        problem = _check([*base, *needed, "--set", item], key, f"from --set {item}", capsys)
        if problem:
            failures.append(f"--set {item}: {problem}")
        config = tmp_path / f"bad-{i}.yaml"
        config.write_text(yaml.safe_dump(_nested({**context, key: value})))
        problem = _check([*base, "-c", str(config)], key, f"in {config}", capsys)
        if problem:
            failures.append(f"{config.name} ({'.'.join(key)}: {text}): {problem}")
        config.unlink()
    assert not failures, f"{len(failures)} of {2 * len(SCHEMA_CASES)} cases failed:\n" + "\n".join(failures[:20])
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a refused config wrote files"
    print(f"{command}: {2 * len(SCHEMA_CASES)} bad-config cases, all exit 2 without a traceback")


def test_the_schema_cases_reach_every_section() -> None:
    sections = {key[0] for key, _, _ in SCHEMA_CASES}
    assert sections >= set(ProjectConfig.model_fields) - {"run_dir"}
    for prefix in (("data",), OUT_OF_DOMAIN):
        named = {key[len(prefix)] for key, _, _ in SCHEMA_CASES if key[:len(prefix)] == prefix and len(key) > len(prefix)}
        assert all(set(model.model_fields) <= named for model in DATA_MODELS.values())
    assert len(SCHEMA_CASES) > 300


def test_unknown_set_key_is_attributed_to_set_not_to_the_file(tmp_path: Path, capsys) -> None:
    """`--set foo.bar=1` with a config file: the message blames the --set, not the file."""
    config = tmp_path / "ok.yaml"
    config.write_text("train:\n  steps: 5\n")
    assert run(["report", "-c", str(config), "--set", "foo.bar=1"]) == 2
    err = capsys.readouterr().err
    assert "foo = {...} (from --set foo.bar=1)" in err and str(config) not in err


def test_bad_out_of_domain_entry_is_refused_by_train_before_any_run_is_saved(tmp_path: Path) -> None:
    """A real `s2s2 train` process: the out-of-domain entry is checked at load, so no run folder exists
    with a config that `evaluate --run` would refuse later."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "train": {"steps": 1},
                                      "evaluate": {"out_of_domain": {"pd": {"adapter": "spm152", "size": -4}}}}))
    result = subprocess.run([sys.executable, "-m", "s2s2.cli", "train", "-c", str(config), "--baseline"], cwd=REPO,
                            text=True, capture_output=True, env={**os.environ, "S2S2_DEBUG": ""}, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"evaluate.out_of_domain.pd.size = -4 (in {config})" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["generate", "--set", "generate.steps=0"],
                                  ["stack", "init", "--set", "store.compression=lz5"],
                                  ["evaluate", "--set", "evaluate.out_of_domain.t2.adapter=nope"]])
def test_real_process_bad_set(argv: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "s2s2.cli", *argv], cwd=tmp_path, text=True, capture_output=True,
                            env={**os.environ, "S2S2_DEBUG": "", "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"from --set {argv[-1]}" in result.stderr and list(tmp_path.iterdir()) == []
