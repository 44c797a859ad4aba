"""Config checks before any job runs, with one short line per problem.

* :func:`check_config_files`: the YAML syntax of every config file of a Snakemake invocation,
  naming the file and line (Snakemake itself only says "Config file is not valid JSON or YAML").
  The default workflow profile calls it (:func:`exit_on_bad_config_files`), so it runs for every
  Snakemake command of this workflow (``run.sh`` too) before Snakemake reads the files.
* :func:`check_config`: the merged config against ``workflow/schemas/config.schema.yaml``. Each
  problem names its key and what is allowed there (an unknown key: the section's keys), without
  the schema dump of ``snakemake.utils.validate``. Integers must be written as integers:
  ``patch_size: 128.0`` is refused, although JSON Schema counts 128.0 as an integer, because the
  code downstream would receive a float.
"""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ConfigError", "check_config", "check_config_files", "config_errors", "config_files_in_argv",
           "exit_on_bad_config_files"]

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


class ConfigError(ValueError):
    """The configuration cannot be used; the message lists every problem found."""


def config_files_in_argv(argv: Sequence[str]) -> list[Path]:
    """The files a Snakemake command line names with ``--configfile(s)``, plus the workflow's own
    ``config/config.yaml`` in its working directory (``--directory``, else the current one)."""
    files, workdir, taking = [], Path.cwd(), False
    args = list(argv[1:])
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in ("--configfile", "--configfiles"):
            taking = not value
            if value:
                files.append(Path(value))
            continue
        if name in ("--directory", "-d") and (value or i + 1 < len(args)):
            workdir = Path(value or args[i + 1])
        if arg.startswith("-"):
            taking = False
        elif taking:
            files.append(Path(arg))
    default = workdir / "config" / "config.yaml"
    return [*files, default] if default.is_file() else files


def check_config_files(paths: Sequence[str | os.PathLike]) -> None:
    """Raise :class:`ConfigError` naming the file, line and column of a YAML syntax error.

    Files that do not exist are left to Snakemake (it names them).
    """
    import yaml

    for path in map(Path, paths):
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            line = path.read_bytes()[: err.start].count(b"\n") + 1
            raise ConfigError(f"config file {path}, line {line}: not UTF-8 text; save it as UTF-8") from None
        try:  # Snakemake reads JSON first (JSON may indent with tabs, YAML may not)
            data = json.loads(text)
        except ValueError:
            data = None
        try:
            data = data if data is not None else yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config file {path}{where}: {problem} (YAML syntax: check the indentation "
                              "(spaces, no tabs), colons and quotes there)") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {path}: the top level must be `key: value` lines, "
                              f"not a {type(data).__name__}")


def exit_on_bad_config_files(argv: Sequence[str]) -> None:
    """For the workflow profile: stop a Snakemake command whose config files are not valid YAML,
    printing one line that names the file and line."""
    import sys

    try:
        check_config_files(config_files_in_argv(argv))
    except ConfigError as err:
        sys.exit(f"duvflow: {err}")


def _validator(schema: Mapping):
    from jsonschema import Draft202012Validator, validators

    strict_int = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(Draft202012Validator, type_checker=strict_int)(schema)


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def _message(error) -> str:
    key, value = _key(error.absolute_path), error.instance
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in value if k not in allowed)
        section = "" if not error.absolute_path else f"{key}."
        return (f"unknown key(s) {', '.join(section + k for k in unknown)}; "
                f"{'the top level' if not section else 'section ' + key} allows: {', '.join(allowed)}")
    if error.validator == "enum":
        return f"{key} = {_short.repr(value)} is not allowed; use one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        hint = f" (write {int(value)})" if "integer" in wanted and isinstance(value, float) and value.is_integer() else ""
        return f"{key} = {_short.repr(value)} must be of type {' or '.join(wanted)}, not {type(value).__name__}{hint}"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{key}: {message}"


def config_errors(config: Mapping, schema: Mapping) -> list[str]:
    """One line per schema violation of ``config`` (empty when it is valid)."""
    errors = sorted(_validator(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [_message(e) for e in errors]


def check_config(config: Mapping, schema_path: str | os.PathLike) -> None:
    """Raise :class:`ConfigError` listing every violation of the schema at ``schema_path``."""
    import yaml

    problems = config_errors(config, yaml.safe_load(Path(schema_path).read_text()))
    if problems:
        raise ConfigError(f"config has {len(problems)} problem(s) (schema {Path(schema_path).name}):\n  "
                          + "\n  ".join(problems))
