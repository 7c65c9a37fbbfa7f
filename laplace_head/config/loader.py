"""Load, default-fill and validate the workflow configuration against ``schema.yaml``.

The schema ships inside the package (``laplace_head/config/schema.yaml``), so a non-editable
install finds it too.

One function, :func:`validate_config`, serves both the Snakefile (start-up validation, before
any job runs) and the stand-alone scripts. Every problem is reported as one
:class:`ConfigError` whose message names the key and says how to fix it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from laplace_head.errors import LaplaceHeadError

SCHEMA_PATH = Path(__file__).resolve().with_name("schema.yaml")
PLACEHOLDER_PREFIX = "/path/to/"


class ConfigError(LaplaceHeadError, ValueError):
    """A configuration value is missing, mistyped, unknown or points nowhere."""


# Bounds on what a config may hold, checked before anything walks it. The schema's deepest value
# (ablation.variants.<name>.prior_precision_grid[i]) is 5 levels down; a config has a few
# hundred values, and YAML aliases that repeat a list or mapping multiply the count (nine
# aliases of nine aliases ... reach 9**9 values from 600 bytes).
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_FILE_BYTES = 1 << 20  # the shipped configs are a few KB


def _full_match_pattern(validator, pattern, instance, schema):
    """JSON Schema's ``pattern`` as a full match: ``re.search`` with ``$`` accepts a value
    that ends in a newline (``run_id: "v1\\n"``); no key of this workflow may hold one."""
    if validator.is_type(instance, "string") and not re.fullmatch(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r} as a whole")


# The validator of every config: Draft 2020-12 with full-match patterns (propertyNames too).
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _full_match_pattern}
)


def load_schema(schema_path: str | os.PathLike = SCHEMA_PATH) -> dict:
    """Read the JSON Schema (YAML syntax)."""
    with open(schema_path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def fill_defaults(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict:
    """Return a copy of ``config`` with every missing key set to the schema's default.

    Keys come in the schema's order (then any it does not know, in the config's order), so the
    resolved config, and every rule's params built from it, do not depend on how a user or a
    ``--configfile`` overlay happens to order them: Snakemake compares params by their repr,
    and a reordered section would otherwise rerun the stage.
    """
    given = copy.deepcopy(dict(config))
    properties = schema.get("properties", {})
    filled: dict[str, Any] = {}
    for key, subschema in properties.items():
        if key in given:
            filled[key] = given[key]
        elif "default" in subschema:
            filled[key] = copy.deepcopy(subschema["default"])
        if subschema.get("type") == "object" and isinstance(filled.get(key), Mapping):
            filled[key] = fill_defaults(filled[key], subschema)
    filled.update((key, value) for key, value in given.items() if key not in properties)
    return filled


def _key_of(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError, config_name: str) -> str:
    key = _key_of(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if key != "<top level>" else ""
        return (
            f"{config_name}: unknown key {', '.join(where + e for e in extra)}. "
            f"Valid keys here: {', '.join(allowed)}. Fix the spelling or remove it."
        )
    if error.validator == "anyOf" and isinstance(error.instance, str):
        # a click policy entry: a name, or NAME@KEY=VALUE (the settings are checked later)
        from laplace_head.settings import POLICY_SETTINGS_MARK

        names = _enum_of(error.validator_value)
        if names is not None:
            return (
                f"{config_name}: {key} = {error.instance!r} is not one of "
                f"{', '.join(map(repr, names))}, nor such a name with setting overrides "
                f"(NAME{POLICY_SETTINGS_MARK}KEY=VALUE, e.g. "
                f"'bald_region{POLICY_SETTINGS_MARK}region_error_level=0.15'). Use one of them."
            )
    if error.validator == "enum":
        options = ", ".join(map(repr, error.validator_value))
        return (
            f"{config_name}: {key} = {error.instance!r} is not one of {options}. Use one of them."
        )
    if error.validator == "type":
        return (
            f"{config_name}: {key} = {error.instance!r} must be of type {error.validator_value}. "
            f"Edit {key} in {config_name}."
        )
    return (
        f"{config_name}: {key} = {error.instance!r}: {error.message}. Edit {key} in {config_name}."
    )


def _file_defining(key_path: list, sources: list[str], fallback: str) -> str:
    """The last of ``sources`` (YAML files, later ones override) that sets ``key_path``."""
    for source in reversed(sources):
        try:
            node = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
            for part in key_path:
                node = node[part]
            return str(source)
        except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError):
            continue
    return fallback


def validate_config(
    config: Mapping[str, Any],
    config_name: str = "config/config.yaml",
    check_paths: bool = True,
    schema_path: str | os.PathLike = SCHEMA_PATH,
    sources: list[str] | None = None,
) -> dict:
    """Fill defaults and validate ``config``; return the resolved config.

    Parameters
    ----------
    config
        The raw configuration (e.g. Snakemake's ``config`` or a parsed YAML file).
    config_name
        How the user knows the file, used in messages ("edit config/config.yaml: ...").
    sources
        The YAML files merged into ``config`` (later ones win); messages then name the file
        that sets the offending key.
    check_paths
        Also require ``data.images_root`` and ``data.masks_root`` to exist, ``data.project_root``
        to be (or be creatable as) a writable folder, and reject ``/path/to/...`` placeholders.

    Raises
    ------
    ConfigError
        One message that names the offending key and the fix.
    """
    schema = load_schema(schema_path)
    # Each source file as written: what the merged dict no longer shows (duplicate keys, tags,
    # an overlay's empty mapping), checked with the file's name.
    files = [(str(s), _read_config_file(Path(s))) for s in sources or [] if Path(s).is_file()]
    for source, raw in files:
        _check_bounded(raw, source)
    _check_empty_maps(files, schema)
    _check_bounded(config, config_name)
    resolved = fill_defaults(config, schema)
    _check_finite(resolved, config_name, list(sources or []))
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        key_path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            key_path += extra[:1]
        config_name = _file_defining(key_path, list(sources or []), config_name)
        raise ConfigError(_describe(error, config_name))
    _coerce_integers(resolved, schema)
    _check_relations(resolved, config_name)
    _check_policy_entries(resolved, config_name, list(sources or []), schema)
    _check_data_path_values(resolved, config_name, list(sources or []))
    if check_paths:
        _check_paths(resolved, config_name, list(sources or []))
    return resolved


def _dotted(key_path: list) -> str:
    """``["laplace", "prior_precision_grid", 1]`` -> ``laplace.prior_precision_grid[1]``."""
    text = ""
    for part in key_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _check_bounded(config: Any, config_name: str) -> None:
    """Refuse a config nested deeper than :data:`MAX_CONFIG_DEPTH` or holding more than
    :data:`MAX_CONFIG_VALUES` values once YAML aliases are expanded.

    The walk is iterative and stops at the first bound, so neither a deep nesting
    (RecursionError) nor an alias bomb (exponential time) reaches the recursive checks below.
    """
    stack: list[tuple[Any, list]] = [(config, [])]
    count = 0
    while stack:
        node, key_path = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{config_name}: the config holds more than {MAX_CONFIG_VALUES:,} values, "
                "counting what its YAML aliases (*name) repeat (a handful of aliases that "
                "repeat a list or mapping multiply it); write the values out instead of "
                "aliasing them."
            )
        if isinstance(node, Mapping):
            children = list(node.items())
        elif isinstance(node, (list, tuple)):
            children = list(enumerate(node))
        else:
            continue
        if children and len(key_path) >= MAX_CONFIG_DEPTH:
            key = _dotted(key_path[:3]) + "..."
            raise ConfigError(
                f"{config_name}: {key} is nested more than {MAX_CONFIG_DEPTH} levels deep; no "
                "key of this workflow nests more than 5. Fix the value of that key."
            )
        stack.extend((value, [*key_path, key]) for key, value in reversed(children))


def _named_entry_maps(schema: Mapping[str, Any], key_path: tuple = ()) -> list[tuple]:
    """Key paths of the mappings whose entries the user names (``ablation.variants``)."""
    found = []
    for key, subschema in schema.get("properties", {}).items():
        if isinstance(subschema.get("additionalProperties"), Mapping):
            found.append((*key_path, key))
        found += _named_entry_maps(subschema, (*key_path, key))
    return found


# What to do instead of emptying a named-entry map in an overlay, by key.
_EMPTY_MAP_FIX = {
    ("ablation", "variants"): (
        "To choose the variants that run, list them in ablation.run (a list replaces the "
        "earlier one)."
    ),
}


def _check_empty_maps(files: list[tuple[str, Mapping]], schema: Mapping[str, Any]) -> None:
    """Refuse ``key: {}`` in a later config file where an earlier one declares entries.

    ``files`` are (name, parsed content) in merge order. Config files merge mapping by mapping
    (Snakemake's ``--configfile`` and :func:`load_configs` alike), so an empty mapping adds
    nothing and the earlier entries stay: ``ablation.variants: {}`` in an overlay would still
    run every declared variant. In the first file, an empty mapping declares none, as written.
    """
    merged: dict = {}
    for source, raw in files:
        for key_path in _named_entry_maps(schema):
            given, earlier = raw, merged
            for part in key_path:
                given = given.get(part) if isinstance(given, Mapping) else None
                earlier = earlier.get(part) if isinstance(earlier, Mapping) else None
            if (
                isinstance(given, Mapping)
                and not given
                and isinstance(earlier, Mapping)
                and earlier
            ):
                key = ".".join(key_path)
                fix = _EMPTY_MAP_FIX.get(key_path, f"Name the entries of {key} in one file.")
                raise ConfigError(
                    f"{source}: {key}: {{}} cannot empty {key}: config files merge key by key, "
                    f"so the {len(earlier)} entries declared before "
                    f"({', '.join(map(str, earlier))}) would all stay. {fix}"
                )
        merged = _deep_merge(merged, raw)


def _non_finite(node: Any, key_path: list) -> tuple[list, float] | None:
    """The first NaN or +-infinity in ``node`` (mappings and lists searched), with its key."""
    if isinstance(node, float) and not math.isfinite(node):
        return key_path, node
    if isinstance(node, Mapping):
        children = ((key, value) for key, value in node.items())
    elif isinstance(node, (list, tuple)):
        children = enumerate(node)
    else:
        return None
    for key, value in children:
        found = _non_finite(value, [*key_path, key])
        if found is not None:
            return found
    return None


def _check_finite(config: Mapping[str, Any], default_name: str, sources: list[str]) -> None:
    """Refuse NaN and infinity anywhere in the config (lists included).

    JSON Schema's range checks are all false for NaN, so ``gaussian_sigma: .nan`` would pass
    ``exclusiveMinimum: 0``; no key of this workflow has a use for a non-finite number.
    """
    found = _non_finite(config, [])
    if found is None:
        return
    key_path, value = found
    key = _dotted(key_path) or "<top level>"
    config_name = _file_defining(key_path, sources, default_name)
    raise ConfigError(
        f"{config_name}: {key} = {value!r} is not a finite number (NaN and infinity are refused "
        f"for every key: range checks cannot reject them and they would poison prompt maps, "
        f"training and the posterior). Set {key} to a finite number in {config_name}."
    )


DATA_PATH_KEYS = ("images_root", "masks_root", "project_root")


def _check_data_path_values(
    config: Mapping[str, Any], default_name: str, sources: list[str]
) -> None:
    """Refuse data paths no workflow can use, whatever ``check_paths`` says.

    An empty ``project_root`` makes every output path absolute from the file system root
    (``/manifests/...``); ``{`` or ``}`` in a path turn it into a Snakemake wildcard pattern.
    """
    data = config["data"]
    for key in DATA_PATH_KEYS:
        value = str(data[key])
        config_name = _file_defining(["data", key], sources, default_name)
        if not value.strip():
            consequence = (
                "every output would go under the file system root (/manifests/...)"
                if key == "project_root"
                else "it would silently mean the current folder"
            )
            raise ConfigError(
                f"edit {config_name}: data.{key} is empty ({value!r}); {consequence}. Set "
                f"data.{key} to a folder."
            )
        if "{" in value or "}" in value:
            raise ConfigError(
                f"edit {config_name}: data.{key} = {value!r} contains '{{' or '}}', which "
                "Snakemake reads as a wildcard in every path built from it. Use a folder whose "
                f"path has no braces (rename it or point a symlink at it) and set data.{key} "
                "to that."
            )


def _coerce_integers(config: dict, schema: Mapping[str, Any]) -> None:
    """Turn integral floats that the schema accepts as integers (``shard_size: 64.0``) into int."""
    for key, subschema in schema.get("properties", {}).items():
        value = config.get(key)
        if isinstance(value, dict):
            _coerce_integers(value, subschema)
        elif subschema.get("type") == "integer" and isinstance(value, float):
            config[key] = int(value)


def _check_relations(config: Mapping[str, Any], config_name: str) -> None:
    from laplace_head.settings import posterior_variant_problem, variant_laplace

    problem = posterior_variant_problem(config["laplace"])
    if problem:
        raise ConfigError(f"{config_name}: laplace.{problem}. Edit the laplace section.")
    unknown = sorted(set(config["ablation"].get("run") or ()) - set(config["ablation"]["variants"]))
    if unknown:
        raise ConfigError(
            f"{config_name}: ablation.run names {', '.join(map(repr, unknown))}, not in "
            f"ablation.variants ({', '.join(config['ablation']['variants']) or 'none'}). "
            "Declare it under ablation.variants or drop it from ablation.run."
        )
    for name in config["ablation"]["variants"]:
        problem = posterior_variant_problem(variant_laplace(config, name))
        if problem:
            raise ConfigError(
                f"{config_name}: ablation variant {name!r}: {problem} (its keys override the "
                f"laplace section). Edit ablation.variants.{name}."
            )
    if config["head"]["variant"] not in config["heads"]:
        raise ConfigError(
            f"{config_name}: head.variant = {config['head']['variant']!r} is not one of heads "
            f"({', '.join(config['heads'])}), the heads the workflow builds. Add it to heads or "
            "pick one of them."
        )
    prompts = config["prompt_generation"]
    if prompts["min_pairs"] > prompts["max_pairs"]:
        raise ConfigError(
            f"{config_name}: prompt_generation.min_pairs ({prompts['min_pairs']}) is larger than "
            f"prompt_generation.max_pairs ({prompts['max_pairs']}). Make min_pairs <= max_pairs."
        )


def _enum_of(any_of: Sequence[Mapping[str, Any]]) -> list | None:
    """The names an ``anyOf`` schema of click policy entries lists (its ``enum`` branch)."""
    return next((branch["enum"] for branch in any_of if "enum" in branch), None)


def _policy_entry_problem(entry: str, names: list, active: Mapping[str, Any]) -> str | None:
    """Why a click policy entry (``NAME`` or ``NAME@KEY=VALUE``) is not valid, else None: an
    unknown rule, or a setting the schema refuses for ``active_prompting.KEY``."""
    from laplace_head.settings import parse_policy

    try:
        name, overrides = parse_policy(entry)
    except ValueError as exc:
        return str(exc)
    if name not in names:
        return f"{name!r} is not one of {', '.join(map(repr, names))}. Use one of them"
    for setting, value in overrides.items():
        problem = next(_Validator(active[setting]).iter_errors(value), None)
        if problem is not None:
            return f"{setting} = {value!r}: {problem.message} (as active_prompting.{setting})"
    return None


def _check_policy_entries(
    config: Mapping[str, Any], default_name: str, sources: list[str], schema: Mapping[str, Any]
) -> None:
    """Every click policy entry of stage 8 and the ablation (:func:`_policy_entry_problem`);
    the message names the entry and the file that sets the list."""
    active = schema["properties"]["active_prompting"]["properties"]
    names = _enum_of(active["policies"]["items"]["anyOf"])
    for section in ("active_prompting", "ablation"):
        for index, entry in enumerate(config[section]["policies"]):
            problem = _policy_entry_problem(entry, names, active)
            if problem is not None:
                key = f"{section}.policies[{index}]"
                config_name = _file_defining([section, "policies"], sources, default_name)
                raise ConfigError(f"{config_name}: {key} = {entry!r}: {problem}. Edit {key}.")


def _check_paths(config: Mapping[str, Any], default_name: str, sources: list[str]) -> None:
    data = config["data"]
    for key in ("images_root", "masks_root", "project_root"):
        value = str(data[key])
        config_name = _file_defining(["data", key], sources, default_name)
        if value.startswith(PLACEHOLDER_PREFIX):
            raise ConfigError(
                f"edit {config_name}: data.{key} is still the placeholder {value!r}; "
                f"set it to your {key.replace('_', ' ')} folder."
            )
    for key in ("images_root", "masks_root"):
        config_name = _file_defining(["data", key], sources, default_name)
        if not Path(data[key]).is_dir():
            raise ConfigError(
                f"edit {config_name}: data.{key} = {data[key]!r} does not exist or is not a "
                f"folder (relative paths are resolved from {os.getcwd()})."
            )
    from laplace_head.dataset.scan import same_roots_problem

    problem = same_roots_problem(data["images_root"], data["masks_root"])
    if problem:
        config_name = _file_defining(["data", "masks_root"], sources, default_name)
        raise ConfigError(f"edit {config_name}: {problem}.")
    _check_writable_folder(
        str(data["project_root"]),
        _file_defining(["data", "project_root"], sources, default_name),
    )
    sam = config["sam"]
    config_name = _file_defining(["sam", "checkpoint"], sources, default_name)
    if sam["backend"] == "sam" and str(sam["checkpoint"]).startswith(PLACEHOLDER_PREFIX):
        raise ConfigError(
            f"edit {config_name}: sam.checkpoint is still the placeholder {sam['checkpoint']!r}; "
            "download an official checkpoint from https://github.com/facebookresearch/"
            "segment-anything#model-checkpoints or set sam.backend: random_walker."
        )


def _check_writable_folder(value: str, config_name: str) -> None:
    """``data.project_root`` is a folder, or can be created, in a place this process may write.

    Checked before any job starts, so an unwritable location fails with one message instead of
    an error from deep inside Snakemake (or a job) later. ``os.access`` also sees read-only
    mounts, for root too.
    """
    path = Path(value).absolute()
    existing = path
    while not os.path.exists(existing):  # False (not an error) for unsearchable parents too
        existing = existing.parent
    if not existing.is_dir():
        what = (
            "is not a folder"
            if existing == path
            else f"cannot be created: {str(existing)!r} is a file"
        )
        raise ConfigError(
            f"edit {config_name}: data.project_root = {value!r} {what}; choose a folder "
            "(it is created when missing)."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"edit {config_name}: data.project_root = {value!r} is not writable "
            f"({str(existing)!r} is on a read-only file system or lacks write permission); "
            "choose a folder you can write to."
        )


def _deep_merge(base: dict, override: Mapping[str, Any]) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _RefusedYaml(yaml.YAMLError):
    """A config file holds something :class:`_ConfigLoader` refuses; the message says what."""


def _line(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return f"line {mark.line + 1}"


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing what a config has no use for and ``safe_load`` lets by:

    - a key given twice in one mapping (``safe_load`` keeps the last one silently);
    - a tag no plain YAML value has (``!!python/...``, ``!custom``): named, with its line;
    - nesting deeper than :data:`MAX_CONFIG_DEPTH` (composing it recurses: RecursionError).

    Aliases are composed as shared nodes (no expansion here); :func:`_check_bounded` counts
    what they expand to.
    """

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _RefusedYaml(
                    f"{_line(self.peek_event())}: the value is nested more than "
                    f"{MAX_CONFIG_DEPTH} levels deep; no key of this workflow nests more than 5. "
                    "Fix the brackets or indentation there."
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" keys may be overridden, as YAML defines
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if first is not key_node:
                    raise _RefusedYaml(
                        f"{_line(key_node)}: key {key!r} is given a second time (first at "
                        f"{_line(first)}); YAML would keep only the last one. Merge the two "
                        "into one."
                    )
        return super().construct_mapping(node, deep)

    def construct_undefined(self, node):
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise _RefusedYaml(
            f"{_line(node)}: tag {tag!r} is refused: config values are plain YAML (numbers, "
            "text, true/false, null, lists, mappings). Remove the tag."
        )


_ConfigLoader.add_constructor(None, _ConfigLoader.construct_undefined)


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object, refusing a key given twice (``json`` keeps the last one silently)."""
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise _RefusedYaml(
                f"key {key!r} is given a second time in one object; JSON would keep only the "
                "last one. Merge the two into one."
            )
        found[key] = value
    return found


def _read_config_file(path: Path) -> Mapping[str, Any]:
    """One config file, read with :class:`_ConfigLoader`; every refusal is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass --config PATH.")
    size = path.stat().st_size
    if size > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(
            f"{path}: {size:,} bytes is no config file (limit {MAX_CONFIG_FILE_BYTES:,} bytes); "
            "pass the YAML config, not a data file."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}); save the config as UTF-8.") from None
    try:  # JSON first, as Snakemake reads a --configfile (JSON with tabs is no YAML)
        raw = json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError:
        try:
            raw = yaml.load(text, Loader=_ConfigLoader) or {}  # noqa: S506 - a safe loader
        except _RefusedYaml as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    except _RefusedYaml as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: the JSON is nested more than {MAX_CONFIG_DEPTH} levels deep; no key of "
            "this workflow nests more than 5."
        ) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (data:, sam:, ...)."
        )
    return raw


def load_configs(
    paths: Sequence[str | os.PathLike],
    check_paths: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """Read YAML config files, merge them key by key (later ones win, as Snakemake merges
    ``--configfile``s), then ``overrides`` (``{section: {key: value}}``, e.g. from command-line
    flags), and return the result validated with defaults filled in."""
    paths = [Path(path) for path in paths]
    merged: dict = {}
    for path in paths:
        merged = _deep_merge(merged, _read_config_file(path))
        _check_bounded(merged, str(path))  # before the next merge copies it
    merged = _deep_merge(merged, dict(overrides or {}))
    sources = [str(path) for path in paths]
    return validate_config(
        merged, config_name=sources[-1], check_paths=check_paths, sources=sources
    )


def load_config(path: str | os.PathLike, check_paths: bool = True) -> dict:
    """Read one YAML config file and return it validated with defaults filled in."""
    return load_configs([path], check_paths)


def schema_markdown(schema_path: str | os.PathLike = SCHEMA_PATH) -> str:
    """The config reference as a Markdown table (key, default, description), from the schema."""
    rows = ["| key | default | description |", "|---|---|---|"]
    for section, section_schema in load_schema(schema_path)["properties"].items():
        for key, prop in section_schema.get("properties", {}).items():
            default = yaml.safe_dump(prop.get("default"), default_flow_style=True, width=1 << 20)
            default = default.strip()
            default = default.removesuffix("\n...").removesuffix("...").strip()
            description = " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")
            rows.append(f"| `{section}.{key}` | `{default}` | {description} |")
    return "\n".join(rows) + "\n"


README_START = "<!-- config-reference:start -->\n"
README_END = "<!-- config-reference:end -->"


def update_readme(readme_path: str | os.PathLike) -> bool:
    """Rewrite the config reference between the README markers; return True if it changed."""
    path = Path(readme_path)
    text = path.read_text(encoding="utf-8")
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    updated = text[:start] + schema_markdown() + text[end:]
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text
