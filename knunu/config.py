"""Analysis configuration: YAML files validated against the JSON schema shipped in knunu.

The packaged default (``knunu/configs/analysis.yaml``) is the base; a user file is merged
over it key by key, then the result is validated. Every problem becomes one
:class:`~knunu.errors.ConfigError` line that names the file and the key.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from knunu.errors import ConfigError
from knunu.rundir import input_file

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "analysis.yaml"


def load_schema(name: str) -> dict[str, Any]:
    """Return a JSON schema shipped in ``knunu/schemas``.

    Args:
        name: Schema stem, e.g. ``"analysis"``.

    Returns:
        The schema as a dict.

    >>> load_schema("analysis")["title"]
    'knunu analysis configuration'
    """
    text = resources.files("knunu").joinpath("schemas", f"{name}.schema.json").read_text()
    return json.loads(text)


def packaged_config_path(name: str = DEFAULT_CONFIG) -> Path:
    """Path of a YAML file of the packaged default configuration."""
    return Path(str(resources.files("knunu.configs").joinpath(name)))


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, raising :class:`ConfigError` with the file name on any problem."""
    path = input_file(path, ConfigError)  # not a directory, FIFO or link loop
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _describe(error: jsonschema.ValidationError) -> tuple[str, str]:
    """Turn a jsonschema error into (dotted key, problem)."""
    key = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        name = ".".join(filter(None, [key, extra[0] if extra else "?"]))
        return name, f"unknown key (allowed here: {', '.join(sorted(allowed))})"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return ".".join(filter(None, [key, missing])), "required key is missing"
    return key or "<top level>", error.message


def validate(data: Any, schema_name: str, source: str | Path) -> None:
    """Validate ``data`` against a packaged schema.

    Args:
        data: The loaded document.
        schema_name: Schema stem in ``knunu/schemas``.
        source: File the data came from, used in the error message.

    Raises:
        ConfigError: one line, ``"<file>: key '<dotted.key>': <problem>"``.
    """
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        key, problem = _describe(errors[0])
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: key '{key}': {problem}{more}")


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Load the analysis configuration.

    Args:
        path: A user YAML merged over the packaged default; ``None`` for the default alone.

    Returns:
        The validated configuration. Relative file paths in it (``fit.workspace``) are made
        absolute relative to the file that named them.

    Raises:
        ConfigError: the file is missing or invalid, a key is unknown or has the wrong type,
            or a file it names does not exist.

    >>> load_config()["scale"]
    'default'
    """
    default_path = packaged_config_path()
    config = read_yaml(default_path)
    source: Path = default_path
    if path is not None:
        source = Path(path)
        user = read_yaml(source)
        if user is None:
            user = {}
        if not isinstance(user, Mapping):
            raise ConfigError(f"{source}: key '<top level>': expected a mapping of keys")
        validate(_merge(config, user), "analysis", source)
        config = _merge(config, user)
    validate(config, "analysis", source)
    if config["scale"] not in config["simulation"].get("scales", {}):
        known = ", ".join(config["simulation"].get("scales", {}))
        raise ConfigError(f"{source}: key 'scale': {config['scale']!r} is not one of {known}")
    simulated, processed = config["simulation"]["pion_prescale"], config["ita"]["pion"]["prescale"]
    if processed % simulated:
        raise ConfigError(
            f"{source}: key 'ita.pion.prescale': {processed} is not a multiple of "
            f"simulation.pion_prescale ({simulated}), whose stream it must select from"
        )
    for area in ("ita", "hta"):  # early stopping validates on a fold neither scored nor empty
        folds = config[area]["folds"]
        for name, params in config[area]["xgboost"].items():
            if params.get("early_stopping_rounds") is not None and folds < 3:
                raise ConfigError(
                    f"{source}: key '{area}.xgboost.{name}.early_stopping_rounds': needs "
                    f"{area}.folds >= 3, got {folds}"
                )
    workspace = config["fit"].get("workspace")
    if workspace:
        ws_path = Path(workspace)
        if not ws_path.is_absolute():
            ws_path = (source.parent / ws_path).resolve()
        try:
            input_file(ws_path, ConfigError)
        except ConfigError as exc:  # says which key named it
            raise ConfigError(f"{source}: key 'fit.workspace': {exc}") from None
        config["fit"]["workspace"] = str(ws_path)
    config["_source"] = str(source)
    log.debug("configuration loaded from %s", source)
    return config
