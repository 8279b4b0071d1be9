"""Strict config base class, YAML loading and `key=value` command-line overrides."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from s2s2.pipeline.errors import ConfigError

ModelT = TypeVar("ModelT", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every config: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def relocated(err: ValidationError, loc: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> ValidationError:
    """`err` again with each error's location mapped by `loc` (to name a field as the user wrote it); every
    error type, built-in or not, keeps its message."""
    return ValidationError.from_exception_data(err.title, [
        InitErrorDetails(type=PydanticCustomError(item["type"], "{message}", {"message": item["msg"]}),
                         loc=loc(item["loc"]), input=item["input"])
        for item in err.errors(include_url=False)])


def _origin(loc: tuple, origins: dict[tuple[str, ...], str], path: Path | None) -> str:
    """Where the value at `loc` came from: the command line (the longest matching override) or the file."""
    keys = tuple(str(p) for p in loc)
    for length in range(len(keys), 0, -1):
        if keys[:length] in origins:
            return origins[keys[:length]]
    return f"in {path}" if path is not None else "default"


def _format_validation_error(err: ValidationError, origins: dict[tuple[str, ...], str], path: Path | None) -> str:
    lines = ["invalid configuration:"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {where} = {shown} ({_origin(item['loc'], origins, path)}): {item['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a YAML-parsed value ("3" -> 3, "[1,2]" -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _record_origin(origins: dict[tuple[str, ...], str], tree: dict[str, Any], keys: list[str], source: str) -> None:
    """Note that `source` sets `keys`, and the first section on the way that it creates (so an unknown
    section, `--set foo.bar=1`, is blamed on the --set, not on the file)."""
    origins[tuple(keys)] = source
    node: Any = tree
    for length, key in enumerate(keys[:-1], start=1):
        if not isinstance(node, dict) or key not in node:
            origins[tuple(keys[:length])] = source
            return
        node = node[key]


def load_config(
    model: type[ModelT],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    dotted: list[str] | None = None,
) -> ModelT:
    """Build `model` from an optional YAML file, then explicit overrides, then `key=value` items.

    `overrides` maps dotted keys to values and skips `None` (an option the user did not give).
    Errors name the file, the field and the offending value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory; fix: pass a YAML file "
                              f"(e.g. {path / 'config.yaml'} or configs/default.yaml)")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (pass an existing YAML file)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read ({err.strerror or err}); "
                              "fix: check its permissions or pass another YAML file") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not a text file (byte {err.start} is not UTF-8); "
                              "fix: pass a YAML config, e.g. configs/default.yaml") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level, not {type(loaded).__name__}")
        data = loaded
    origins: dict[tuple[str, ...], str] = {}  # command-line values, so errors blame the right place
    for key, value in (overrides or {}).items():
        if value is not None:
            _record_origin(origins, data, key.split("."), "from a command-line option")
            _set_path(data, key.split("."), value)
    for item in dotted or []:
        keys, value = parse_override(item)
        _record_origin(origins, data, keys, f"from --set {item}")
        _set_path(data, keys, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origins, path)) from None


def dump_config(config: StrictModel, path: str | Path) -> None:
    """Write the resolved config as YAML (what a run actually used)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
