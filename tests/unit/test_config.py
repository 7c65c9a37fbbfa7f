"""laplace_head.config: defaults, one clear ConfigError per problem, naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from laplace_head.config import (
    ConfigError,
    fill_defaults,
    load_config,
    load_configs,
    load_schema,
    validate_config,
)
from laplace_head.errors import LaplaceHeadError


def _leaf_keys(node: dict, schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, subschema in schema.get("properties", {}).items():
        if subschema.get("type") == "object":
            keys |= _leaf_keys(node.get(key) or {}, subschema, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _present_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        if isinstance(value, dict):
            keys |= _present_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _all_properties(schema: dict, prefix: str = ""):
    for key, subschema in schema.get("properties", {}).items():
        yield f"{prefix}{key}", subschema
        if subschema.get("type") == "object":
            yield from _all_properties(subschema, f"{prefix}{key}.")


def test_schema_gives_every_key_a_description_and_default_and_closes_objects() -> None:
    schema = load_schema()
    assert schema["additionalProperties"] is False
    for key, subschema in _all_properties(schema):
        assert subschema.get("description"), f"{key} has no description"
        assert "default" in subschema, f"{key} has no default"
        if subschema.get("type") == "object":
            entries = subschema.get("additionalProperties")
            if isinstance(entries, dict):  # a map of user-chosen names: names and entries closed
                assert subschema["propertyNames"]["pattern"], key
                assert entries.get("additionalProperties") is False, key
            else:
                assert entries is False, key


def test_config_yaml_carries_every_schema_key(repo_root: Path) -> None:
    """config/config.yaml is the reference users edit: every key of the schema is in it."""
    raw = yaml.safe_load((repo_root / "config" / "config.yaml").read_text(encoding="utf-8"))
    missing = _leaf_keys(raw, load_schema()) - _present_keys(raw)
    assert not missing, f"config/config.yaml lacks {sorted(missing)}"


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "real_dev.yaml"])
def test_shipped_configs_validate(repo_root: Path, name: str) -> None:
    raw = yaml.safe_load((repo_root / "config" / name).read_text(encoding="utf-8"))
    resolved = validate_config(raw, config_name=name, check_paths=False)
    assert resolved["data"]["shard_size"] >= 1


def test_empty_config_resolves_to_the_schema_defaults() -> None:
    resolved = validate_config({}, check_paths=False)
    schema = load_schema()
    for key, subschema in _all_properties(schema):
        if subschema.get("type") == "object":
            continue
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == subschema["default"], key
    assert fill_defaults({"data": {"shard_size": 3}}, schema)["data"]["split_seed"] == 123


def test_defaults_do_not_leak_between_calls() -> None:
    first = validate_config({}, check_paths=False)
    first["laplace"]["prior_precision_grid"].append(99.0)
    assert 99.0 not in validate_config({}, check_paths=False)["laplace"]["prior_precision_grid"]


# One case per kind of schema violation: (config, key the message must name).
VIOLATIONS = {
    "wrong type": ({"data": {"shard_size": "big"}}, "data.shard_size"),
    "bool for integer": ({"data": {"shard_size": True}}, "data.shard_size"),
    "fractional float for integer": ({"data": {"split_seed": 1.5}}, "data.split_seed"),
    "null for number": ({"training": {"lr": None}}, "training.lr"),
    "string for boolean": ({"wandb": {"enabled": "yes"}}, "wandb.enabled"),
    "section not a mapping": ({"data": 5}, "data"),
    "enum": ({"sam": {"backend": "sam2"}}, "sam.backend"),
    "minimum": ({"data": {"shard_size": 0}}, "data.shard_size"),
    "exclusive minimum": ({"prompt_generation": {"gaussian_sigma": 0}}, "gaussian_sigma"),
    "pattern": ({"training": {"run_id": "my run/1"}}, "training.run_id"),
    "empty array": ({"laplace": {"prior_precision_grid": []}}, "laplace.prior_precision_grid"),
    "bad array item": ({"laplace": {"temperature_grid": [1.0, -2.0]}}, "temperature_grid"),
    "unknown top-level key": ({"trainig": {}}, "trainig"),
    "unknown nested key": ({"data": {"shard_sz": 3}}, "data.shard_sz"),
    "min_pairs > max_pairs": (
        {"prompt_generation": {"min_pairs": 5, "max_pairs": 2}},
        "prompt_generation.min_pairs",
    ),
    "unknown head variant": ({"head": {"variant": "rgb"}}, "head.variant"),
    "unknown head in heads": ({"heads": ["no_image", "depth"]}, "heads"),
    "a head twice": ({"heads": ["image", "image"]}, "heads"),
    "no head": ({"heads": []}, "heads"),
    "head.variant not built": ({"head": {"variant": "image"}}, "head.variant"),
    "unknown click rule": ({"active_prompting": {"policies": ["bald_regoin"]}}, "policies"),
    "unknown rule with settings": (
        {"ablation": {"policies": ["bald_regio@region_error_level=0.2"]}},
        "ablation.policies[0]",
    ),
    "unknown policy setting": (
        {"active_prompting": {"policies": ["random", "bald_region@level=0.2"]}},
        "active_prompting.policies[1]",
    ),
    "policy setting out of range": (
        {"active_prompting": {"policies": ["bald_region@region_error_level=0.9"]}},
        "active_prompting.policies[0]",
    ),
}


def test_a_policy_entry_with_settings_is_accepted_and_its_errors_say_why() -> None:
    entries = [
        "random",
        "bald_region@region_error_level=0.15",
        "map_region@region_error_level=0.15",
    ]
    config = validate_config({"active_prompting": {"policies": entries}}, check_paths=False)
    assert config["active_prompting"]["policies"] == entries
    with pytest.raises(ConfigError, match=r"region_error_level = 0.9: 0.9 is greater than the max"):
        validate_config(
            {"active_prompting": {"policies": ["bald_region@region_error_level=0.9"]}},
            check_paths=False,
        )
    with pytest.raises(ConfigError, match=r"nor such a name with setting overrides"):
        validate_config({"active_prompting": {"policies": ["bald_regoin"]}}, check_paths=False)


def test_head_variant_must_be_one_of_the_heads_built() -> None:
    with pytest.raises(ConfigError, match=r"head.variant = 'image' is not one of heads \(no_imag"):
        validate_config({"head": {"variant": "image"}}, check_paths=False)
    config = validate_config(
        {"head": {"variant": "image"}, "heads": ["no_image", "image"]}, check_paths=False
    )
    assert config["head"]["variant"] == "image" and config["heads"] == ["no_image", "image"]
    defaults = validate_config({}, check_paths=False)
    assert defaults["head"]["variant"] == "no_image" and defaults["heads"] == ["no_image"]


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_each_violation_gives_one_config_error_naming_the_key(case: str) -> None:
    config, key = VIOLATIONS[case]
    with pytest.raises(ConfigError) as caught:
        validate_config(config, config_name="my.yaml", check_paths=False)
    message = str(caught.value)
    assert key in message
    assert "my.yaml" in message
    assert "\n" not in message and "Traceback" not in message
    assert isinstance(caught.value, LaplaceHeadError)


def test_unknown_key_lists_the_valid_keys() -> None:
    with pytest.raises(ConfigError, match="Valid keys here: .*shard_size"):
        validate_config({"data": {"shard_sz": 3}}, check_paths=False)


def test_min_pairs_message_names_both_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"prompt_generation": {"min_pairs": 5, "max_pairs": 2}}, check_paths=False)
    assert "min_pairs" in str(caught.value) and "max_pairs" in str(caught.value)


def test_several_violations_still_give_one_message() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {"data": {"shard_size": "x"}, "sam": {"backend": "nope"}, "bogus": 1},
            check_paths=False,
        )
    message = str(caught.value)
    named = [key for key in ("data.shard_size", "sam.backend", "bogus") if key in message]
    assert len(named) == 1, message


def test_integral_floats_become_integers() -> None:
    resolved = validate_config({"data": {"shard_size": 64.0}}, check_paths=False)
    assert resolved["data"]["shard_size"] == 64
    assert isinstance(resolved["data"]["shard_size"], int)


def _roots(tmp_path: Path) -> dict:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    return {
        "images_root": str(tmp_path / "images"),
        "masks_root": str(tmp_path / "masks"),
        "project_root": str(tmp_path / "project"),
    }


def test_existing_input_folders_pass_the_path_checks(tmp_path: Path) -> None:
    resolved = validate_config({"data": _roots(tmp_path), "sam": {"backend": "random_walker"}})
    assert resolved["data"]["project_root"] == str(tmp_path / "project")


@pytest.mark.parametrize("key", ["images_root", "masks_root", "project_root"])
def test_placeholder_paths_say_edit_the_config(tmp_path: Path, key: str) -> None:
    data = {**_roots(tmp_path), key: "/path/to/" + key}
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": data, "sam": {"backend": "random_walker"}})
    assert str(caught.value).startswith("edit config/config.yaml: data." + key)
    assert "placeholder" in str(caught.value)


def test_shipped_config_yaml_stops_at_the_images_root_placeholder(repo_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"edit .*config\.yaml: data\.images_root"):
        load_config(repo_root / "config" / "config.yaml")


@pytest.mark.parametrize("key", ["images_root", "masks_root"])
def test_missing_input_folder_is_named(tmp_path: Path, key: str) -> None:
    data = {**_roots(tmp_path), key: str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError) as caught:
        validate_config({"data": data, "sam": {"backend": "random_walker"}})
    assert f"data.{key}" in str(caught.value) and "does not exist" in str(caught.value)


def test_input_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    data = {**_roots(tmp_path), "images_root": str(tmp_path / "file")}
    with pytest.raises(ConfigError, match="data.images_root"):
        validate_config({"data": data, "sam": {"backend": "random_walker"}})


def test_sam_checkpoint_placeholder_only_matters_for_the_sam_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sam.checkpoint .*random_walker"):
        validate_config({"data": _roots(tmp_path), "sam": {"backend": "sam"}})
    validate_config({"data": _roots(tmp_path), "sam": {"backend": "random_walker"}})


def test_check_paths_false_skips_path_checks(tmp_path: Path) -> None:
    data = {**_roots(tmp_path), "images_root": str(tmp_path / "nowhere")}
    config = {"data": data, "sam": {"backend": "random_walker"}}
    with pytest.raises(ConfigError, match="data.images_root .*does not exist"):
        validate_config(config)
    resolved = validate_config(config, check_paths=False)
    assert resolved["data"]["images_root"] == str(tmp_path / "nowhere")
    assert not (tmp_path / "project").exists()

    # The /path/to/... placeholders are path checks too: kept as they are, not refused.
    with pytest.raises(ConfigError, match="placeholder"):
        validate_config({"data": {"images_root": "/nowhere/at/all"}})
    resolved = validate_config({"data": {"images_root": "/nowhere/at/all"}}, check_paths=False)
    assert resolved["data"]["images_root"] == "/nowhere/at/all"
    assert resolved["data"]["masks_root"] == "/path/to/masks_root"
    assert resolved["data"]["project_root"] == "/path/to/project_root"


def _write(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def test_message_names_the_file_that_sets_the_key(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", {"data": {"shard_size": 4}})
    override = _write(tmp_path / "override.yaml", {"sam": {"backend": "nope"}})
    merged = {"data": {"shard_size": 4}, "sam": {"backend": "nope"}}
    with pytest.raises(ConfigError) as caught:
        validate_config(merged, config_name=override, check_paths=False, sources=[base, override])
    assert str(caught.value).startswith(override)

    merged = {"data": {"shard_size": "x"}, "sam": {"backend": "sam"}}
    base = _write(tmp_path / "base.yaml", {"data": {"shard_size": "x"}})
    override = _write(tmp_path / "override.yaml", {"sam": {"backend": "sam"}})
    with pytest.raises(ConfigError) as caught:
        validate_config(merged, config_name=override, check_paths=False, sources=[base, override])
    assert str(caught.value).startswith(base)


def test_unknown_key_names_the_file_that_has_it(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", {"data": {"shard_size": 4}})
    override = _write(tmp_path / "override.yaml", {"data": {"shard_sz": 4}})
    merged = {"data": {"shard_size": 4, "shard_sz": 4}}
    with pytest.raises(ConfigError) as caught:
        validate_config(merged, config_name=override, check_paths=False, sources=[base, override])
    assert str(caught.value).startswith(override) and "data.shard_sz" in str(caught.value)


def test_placeholder_names_the_file_that_left_it(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    base = _write(tmp_path / "base.yaml", {"data": {"images_root": "/path/to/images_root"}})
    override = _write(
        tmp_path / "override.yaml",
        {"data": {"masks_root": roots["masks_root"], "project_root": roots["project_root"]}},
    )
    merged = {"data": {**roots, "images_root": "/path/to/images_root"}}
    with pytest.raises(ConfigError) as caught:
        validate_config(merged, config_name=override, sources=[base, override])
    assert str(caught.value).startswith(f"edit {base}: data.images_root")


def test_load_config_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml", check_paths=False)["data"]["shard_size"] == 64


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.yaml", {"training": {"num_epochs": 0}})
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_paths=False)
    assert str(caught.value).startswith(path) and "training.num_epochs" in str(caught.value)


def _leaf_values(node: dict, prefix: str = "") -> dict:
    values = {}
    for key, value in node.items():
        if isinstance(value, dict):
            values.update(_leaf_values(value, f"{prefix}{key}."))
        else:
            values[f"{prefix}{key}"] = value
    return values


@pytest.mark.parametrize("name", ["demo.yaml", "real_dev.yaml"])
def test_overlays_hold_only_differing_keys_and_merge_valid(repo_root: Path, name: str) -> None:
    """config/demo.yaml and real_dev.yaml are overlays deep-merged onto config/config.yaml.

    Each holds only keys of config.yaml whose value it changes (no copies that would silently
    stop following config.yaml), and config.yaml + overlay, merged as Snakemake merges
    ``--configfile`` files, validates.
    """
    from snakemake.utils import update_config

    base = yaml.safe_load((repo_root / "config" / "config.yaml").read_text(encoding="utf-8"))
    overlay = yaml.safe_load((repo_root / "config" / name).read_text(encoding="utf-8"))
    base_values, overlay_values = _leaf_values(base), _leaf_values(overlay)
    assert overlay_values, f"{name} is empty"
    unknown = sorted(set(overlay_values) - set(base_values))
    assert not unknown, f"{name} sets keys config/config.yaml does not have: {unknown}"
    copied = sorted(key for key, value in overlay_values.items() if base_values[key] == value)
    assert not copied, f"{name} repeats config/config.yaml's values of {copied}; remove them"

    merged = yaml.safe_load((repo_root / "config" / "config.yaml").read_text(encoding="utf-8"))
    update_config(merged, overlay)
    resolved = validate_config(merged, config_name=name, check_paths=False)
    for key, value in overlay_values.items():
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    # Schema defaults equal config.yaml, so the overlay alone resolves to the same config.
    assert validate_config(overlay, config_name=name, check_paths=False) == resolved


# --- non-finite numbers, maxima, exclusive minima, unusable data paths ------------------------

NAN, INF = float("nan"), float("inf")


def _numeric_keys(schema: dict, prefix: str = ""):
    """(dotted key, subschema) of every number/integer key of the schema (nullable included)."""
    for key, subschema in schema.get("properties", {}).items():
        types = subschema.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types:
            yield from _numeric_keys(subschema, f"{prefix}{key}.")
        elif {"number", "integer"} & set(types):
            yield f"{prefix}{key}", subschema
        elif "array" in types and subschema.get("items", {}).get("type") in ("number", "integer"):
            yield f"{prefix}{key}[]", subschema["items"]


def _nested(key: str, value) -> dict:
    section, name = key.split(".")
    return {section: {name: value}}


NUMERIC_KEYS = sorted(key.removesuffix("[]") for key, _ in _numeric_keys(load_schema()))


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_non_finite_numbers_are_refused_for_every_numeric_key(key: str, bad: float) -> None:
    schema_default = validate_config({}, check_paths=False)[key.split(".")[0]][key.split(".")[1]]
    value = [1.0, bad] if isinstance(schema_default, list) else bad
    named = f"{key}[1]" if isinstance(schema_default, list) else key
    with pytest.raises(ConfigError) as caught:
        validate_config(_nested(key, value), config_name="my.yaml", check_paths=False)
    message = str(caught.value)
    assert named in message and "finite" in message and "my.yaml" in message, message
    assert "\n" not in message


def test_non_finite_number_in_a_yaml_file_names_the_file_and_key(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("training:\n  lr: 0.01\n")
    override = tmp_path / "override.yaml"
    override.write_text("prompt_generation:\n  gaussian_sigma: .nan\n")
    merged = {"training": {"lr": 0.01}, "prompt_generation": {"gaussian_sigma": NAN}}
    with pytest.raises(ConfigError) as caught:
        validate_config(merged, check_paths=False, sources=[str(base), str(override)])
    assert str(caught.value).startswith(str(override))
    assert "prompt_generation.gaussian_sigma" in str(caught.value)
    path = tmp_path / "grid.yaml"
    path.write_text("laplace:\n  prior_precision_grid: [0.1, .inf, 1.0]\n")
    with pytest.raises(ConfigError, match=r"laplace\.prior_precision_grid\[1\] = inf"):
        load_config(path, check_paths=False)


def test_every_numeric_key_has_a_finite_maximum_explained_in_its_description() -> None:
    schema = load_schema()
    properties = dict(_all_properties(schema))
    for key, subschema in _numeric_keys(schema):
        if key.rsplit(".", 1)[-1] == "seed" or key.endswith("_seed"):
            continue  # seeds are hashed (derive_seed): every integer is a valid seed
        if "enum" in subschema:
            continue  # head.channels_in: one allowed value
        assert "maximum" in subschema, f"{key} has no maximum"
        assert float(subschema["maximum"]) < float("inf"), key
        description = str(properties[key.removesuffix("[]")]["description"])
        assert "at most" in description.lower(), f"{key}: say why the maximum is what it is"


@pytest.mark.parametrize(
    "key",
    [
        "prompt_generation.max_pairs",
        "prompt_generation.num_promptsets_train",
        "prompt_generation.num_promptsets_val",
        "prompt_generation.num_promptsets_test",
        "data.shard_size",
        "training.batch_size",
        "training.num_epochs",
        "head.hidden_channels",
        "sam.random_walker_max_side",
        "laplace.max_pixels_fit",
        "laplace.n_posterior_samples",
        "laplace.ece_bins",
    ],
)
def test_absurd_sizes_are_refused_and_the_maximum_itself_accepted(key: str) -> None:
    section, name = key.split(".")
    maximum = load_schema()["properties"][section]["properties"][name]["maximum"]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(_nested(key, 10**12), config_name="my.yaml", check_paths=False)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(_nested(key, maximum + 1), check_paths=False)
    config = _nested(key, maximum)
    if key == "prompt_generation.max_pairs":
        config["prompt_generation"]["min_pairs"] = 1
    assert validate_config(config, check_paths=False)[section][name] == maximum


def test_max_pairs_of_a_billion_written_as_a_float_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"prompt_generation\.max_pairs = 1000000000\.0"):
        validate_config({"prompt_generation": {"max_pairs": 1e9}}, check_paths=False)


@pytest.mark.parametrize(
    "key",
    [
        "prompt_generation.gaussian_sigma",
        "training.lr",
        "training.logit_clip",
        "sam.random_walker_beta",
    ],
)
def test_zero_is_refused_where_it_makes_no_sense(key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(_nested(key, 0), check_paths=False)


@pytest.mark.parametrize("key", ["images_root", "masks_root", "project_root"])
@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("check_paths", [True, False])
def test_empty_data_paths_are_refused(tmp_path: Path, key: str, value: str, check_paths) -> None:
    data = {**_roots(tmp_path), key: value}
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {"data": data, "sam": {"backend": "random_walker"}}, check_paths=check_paths
        )
    assert f"data.{key}" in str(caught.value) and "empty" in str(caught.value)
    assert not (tmp_path / "manifests").exists()


@pytest.mark.parametrize("key", ["images_root", "masks_root", "project_root"])
@pytest.mark.parametrize("brace", ["{", "}", "{run_id}"])
@pytest.mark.parametrize("check_paths", [True, False])
def test_braces_in_data_paths_are_refused(tmp_path: Path, key: str, brace: str, check_paths):
    roots = _roots(tmp_path)
    braced = tmp_path / f"data{brace}x"
    braced.mkdir()
    data = {**roots, key: str(braced)}
    with pytest.raises(ConfigError) as caught:
        validate_config(
            {"data": data, "sam": {"backend": "random_walker"}}, check_paths=check_paths
        )
    message = str(caught.value)
    assert f"data.{key}" in message and "wildcard" in message, message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "laplace:\n  approx: kron\n",
            r"laplace\.target_layer = 'final_conv' with approx = 'kron'",
        ),
        ("laplace:\n  fixed_temperature: hot\n", r"fixed_temperature = 'hot' must be"),
        (
            "ablation:\n  variants:\n    x: {target_layer: all, approx: full}\n",
            r"variant 'x': target_layer = 'all' with approx = 'full'.*ablation\.variants\.x",
        ),
        ("ablation:\n  variants:\n    x: {seed: 3}\n", r"unknown key ablation\.variants\.x\.seed"),
        ("ablation:\n  variants:\n    bad-name: {}\n", r"ablation\.variants"),
    ],
)
def test_posterior_variants_are_checked(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "variant.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, check_paths=False)


def test_a_variant_overrides_only_its_keys_for_stages_6_and_8(repo_root: Path) -> None:
    from laplace_head.settings import stage_params

    config = load_config(repo_root / "config" / "config.yaml", check_paths=False)
    base = stage_params(config)
    variant = stage_params(config, "all_kron_fixed_t")
    laplace = variant["fit_laplace"]["laplace"]
    assert (laplace["target_layer"], laplace["approx"], laplace["tuning"]) == (
        "all",
        "kron",
        "fixed_temperature",
    )
    assert laplace["prior_precision_grid"] == base["fit_laplace"]["laplace"]["prior_precision_grid"]
    assert variant["evaluate"] == base["evaluate"]  # the same test-time settings for all
    # stage 7's example suggestions follow the click rules' settings, as stage 8's clicks do
    assert base["evaluate"]["policy_settings"] == base["active_prompting"]["policy_settings"]
    assert variant["active_prompting"]["policies"] == config["ablation"]["policies"]
    assert variant["active_prompting"]["max_clicks"] == config["ablation"]["max_clicks"]
    with pytest.raises(KeyError, match="unknown ablation variant 'nope'"):
        stage_params(config, "nope")


def _reversed_keys(node, name: str = ""):
    """Every mapping's keys reversed, except the ablation's variant names (their order is the
    user's choice of table order, not a setting)."""
    if isinstance(node, dict):
        keys = list(node) if name == "variants" else reversed(list(node))
        return {key: _reversed_keys(node[key], key) for key in keys}
    return node


@pytest.mark.parametrize("overlay", ["demo.yaml", "real_dev.yaml"])
def test_key_order_in_a_config_file_is_no_rerun_trigger(repo_root: Path, overlay: str) -> None:
    """Snakemake compares a rule's params by repr, which keeps dict order: the same settings
    written in another order (or merged from an overlay) must give the same params text."""
    from laplace_head.settings import stage_params

    merged = load_configs(
        [repo_root / "config" / "config.yaml", repo_root / "config" / overlay], check_paths=False
    )
    shuffled = validate_config(_reversed_keys(merged), check_paths=False)
    assert list(shuffled["training"]) != list(reversed(list(merged["training"])))
    assert repr(stage_params(shuffled)) == repr(stage_params(merged))
    for variant in merged["ablation"]["variants"]:
        assert repr(stage_params(shuffled, variant)) == repr(stage_params(merged, variant))
    # The schema fixes the order, not the file.
    assert list(merged["laplace"]) == list(load_schema()["properties"]["laplace"]["properties"])


def test_real_dev_ships_the_ablation_variant_it_names_key_for_key(repo_root: Path) -> None:
    """config/real_dev.yaml's posterior is ablation.variants' last_full_fixed_t_tau, the one
    the real_large ablation clicked with: every laplace setting of the fit is the variant's
    (a pixel cap of its own would give another temperature T and another posterior)."""
    from laplace_head.settings import stage_params, variant_laplace

    paths = [repo_root / "config" / "config.yaml", repo_root / "config" / "real_dev.yaml"]
    config = load_configs(paths, check_paths=False)
    shipped = stage_params(config)["fit_laplace"]["laplace"]
    variant = variant_laplace(config, "last_full_fixed_t_tau")
    assert {key: variant[key] for key in shipped} == shipped


def test_temperature_scaling_cap_is_not_the_fit_cap(repo_root: Path, tmp_path: Path) -> None:
    """A fit on 200k pixels; stage 7's baseline keeps its own cap, and the cap is not a fit
    setting (changing it refits nothing)."""
    from laplace_head.settings import stage_params

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("laplace:\n  max_pixels_fit: 200000\n")
    paths = [repo_root / "config" / "config.yaml", repo_root / "config" / "real_dev.yaml", overlay]
    config = load_configs(paths, check_paths=False)
    params = stage_params(config)
    assert config["laplace"]["max_pixels_fit"] == 200_000
    assert params["evaluate"]["max_pixels_calibration"] == 4_000_000
    assert "max_pixels_calibration" not in params["fit_laplace"]["laplace"]
    config["laplace"]["max_pixels_calibration"] = 1000
    assert stage_params(config)["evaluate"]["max_pixels_calibration"] == 1000
    assert stage_params(config)["fit_laplace"] == params["fit_laplace"]


def test_ablation_run_picks_variants_and_names_unknown_ones(
    repo_root: Path, tmp_path: Path
) -> None:
    from laplace_head.settings import ablation_variants, stage_params

    config = load_config(repo_root / "config" / "config.yaml", check_paths=False)
    assert ablation_variants(config) == list(config["ablation"]["variants"])
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "ablation:\n  variants: {mine: {approx: full}}\n  run: [mine, last_diag_valnll]\n"
    )
    paths = [repo_root / "config" / "config.yaml", overlay]
    config = load_configs(paths, check_paths=False)
    assert "all_kron_fixed_t" in config["ablation"]["variants"]  # the map merged
    assert stage_params(config)["ablation"]["variants"] == ["mine", "last_diag_valnll"]
    overlay.write_text("ablation:\n  run: [mine]\n")
    with pytest.raises(ConfigError, match="ablation.run names 'mine', not in ablation.variants"):
        load_configs(paths, check_paths=False)


def test_cli_names_an_unknown_variant_and_the_declared_ones(repo_root: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "laplace_head", "evaluate", "--variant", "nope"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "unknown ablation variant 'nope'" in result.stderr
    assert "all_kron_fixed_t" in result.stderr
    assert "Traceback" not in result.stderr


# --- What a config file may hold: full-match patterns, one value per key, bounded size ---


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('training:\n  run_id: "v1\\n"\n', "training.run_id"),
        ('ablation:\n  variants:\n    "a\\n": {approx: diagonal}\n', "ablation.variants"),
        ('ablation:\n  run: ["last_diag_valnll\\n"]\n', "ablation.run"),
    ],
    ids=["run_id", "variant name", "ablation.run"],
)
def test_patterns_must_match_the_whole_value_a_trailing_newline_included(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "newline.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, check_paths=False)
    assert key in str(caught.value) and "\\n" in str(caught.value), caught.value


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (
            "laplace:\n  approx: kron\nsam:\n  backend: sam\nlaplace:\n  approx: full\n",
            5,
            "laplace",
        ),
        ("training:\n  run_id: a\n  seed: 1\n  run_id: b\n", 4, "run_id"),
    ],
    ids=["section", "nested key"],
)
def test_duplicate_keys_are_refused_naming_the_line(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text, encoding="utf-8")
    for call in (
        lambda: load_config(path, check_paths=False),
        # The Snakefile's path: Snakemake has parsed (and silently merged) the file already.
        lambda: validate_config(
            yaml.safe_load(text), str(path), check_paths=False, sources=[str(path)]
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            call()
        message = str(caught.value)
        assert str(path) in message and f"line {line}" in message and repr(key) in message


def _alias_bomb(levels: int) -> str:
    """``levels`` lists, each holding the previous one nine times (9**levels values)."""
    lines = ["l0: &l0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [5, 9])
def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(levels), encoding="utf-8")
    assert len(path.read_bytes()) < 700
    for call in (
        lambda: load_config(path, check_paths=False),
        lambda: validate_config(yaml.safe_load(path.read_text()), str(path), check_paths=False),
    ):
        with pytest.raises(
            ConfigError, match="more than 100,000 values, counting what its YAML aliases"
        ):
            call()


def test_deep_nesting_is_refused_with_a_message_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("data: " + "[" * 3000 + "]" * 3000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}: line 1: .*nested more than 32 levels"):
        load_config(path, check_paths=False)
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(ConfigError, match=r"data\[0\]\[0\].*nested more than 32 levels"):
        validate_config({"data": deep}, check_paths=False)


@pytest.mark.parametrize(
    "tag", ["!!python/object/apply:os.system", "!!python/name:os.system", "!custom"]
)
def test_python_and_unknown_tags_are_refused_by_name(tmp_path: Path, tag: str) -> None:
    path = tmp_path / "tagged.yaml"
    path.write_text(f"data:\n  images_root: {tag} ['true']\n", encoding="utf-8")
    for call in (
        lambda: load_config(path, check_paths=False),
        lambda: validate_config({}, str(path), check_paths=False, sources=[str(path)]),
    ):
        with pytest.raises(ConfigError) as caught:
            call()
        message = str(caught.value)
        assert f"{path}: line 2: " in message and tag in message and "tab" not in message


def test_an_empty_variants_map_in_an_overlay_is_refused(repo_root: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "no_variants.yaml"
    overlay.write_text("ablation:\n  variants: {}\n", encoding="utf-8")
    base = repo_root / "config" / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_configs([base, overlay], check_paths=False)
    message = str(caught.value)
    assert str(overlay) in message and "ablation.variants" in message
    assert "ablation.run" in message  # the fix: a list replaces the earlier one


def test_an_empty_variants_map_on_its_own_declares_none(tmp_path: Path) -> None:
    from laplace_head.settings import ablation_variants

    path = tmp_path / "alone.yaml"
    path.write_text("ablation:\n  variants: {}\n", encoding="utf-8")
    assert ablation_variants(load_config(path, check_paths=False)) == []


def test_one_folder_as_images_root_and_masks_root_is_refused(tmp_path: Path) -> None:
    roots = _roots(tmp_path)
    roots["masks_root"] = roots["images_root"]
    with pytest.raises(ConfigError, match=r"data\.images_root .* data\.masks_root .* own mask"):
        validate_config({"data": roots, "sam": {"backend": "random_walker"}})


def test_a_config_file_over_a_megabyte_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("data:\n  shard_size: 4\n" + "# filler\n" * 200_000, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"huge\.yaml: 1,800,0\d\d bytes is no config file"):
        load_config(path, check_paths=False)


def test_a_json_config_reads_as_snakemake_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n\t"training": {"run_id": "j1"}\n}\n', encoding="utf-8")  # a tab: no YAML
    assert load_config(path, check_paths=False)["training"]["run_id"] == "j1"
    assert validate_config({}, str(path), check_paths=False, sources=[str(path)])
    path.write_text('{"training": {"run_id": "a", "run_id": "b"}}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.json: key 'run_id' is given a second time"):
        load_config(path, check_paths=False)


def test_a_config_that_is_not_utf8_gets_a_message(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"training:\n  run_id: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config(path, check_paths=False)


def test_real_large_is_an_overlay_of_real_dev(repo_root: Path) -> None:
    """config/real_large.yaml overrides only real_dev's data keys (and adds the fractions) and
    the ablation's variants to run; the three files merged, as `make real-large` passes them,
    validate (with real_dev's two heads)."""
    config_dir = repo_root / "config"
    real_dev = yaml.safe_load((config_dir / "real_dev.yaml").read_text(encoding="utf-8"))
    overlay = yaml.safe_load((config_dir / "real_large.yaml").read_text(encoding="utf-8"))
    assert set(overlay) == {"data", "ablation"} and set(overlay["ablation"]) == {"run"}
    copied = sorted(
        key for key, value in overlay["data"].items() if real_dev["data"].get(key) == value
    )
    assert not copied, f"real_large.yaml repeats real_dev.yaml's {copied}"
    resolved = load_configs(
        [config_dir / name for name in ("config.yaml", "real_dev.yaml", "real_large.yaml")],
        check_paths=False,
    )
    assert resolved["data"]["images_root"] == "../shared/data/real_large/images_root"
    assert resolved["data"]["project_root"] == "real_large_project"
    assert resolved["data"]["split_fractions"] == [0.15, 0.15]
    assert resolved["laplace"]["approx"] == real_dev["laplace"]["approx"]
    assert set(resolved["ablation"]["run"]) <= set(resolved["ablation"]["variants"])
    assert resolved["heads"] == ["no_image", "image"]
    assert resolved["head"]["variant"] in resolved["heads"]


@pytest.mark.parametrize(
    ("overlay", "rule", "key"),
    [
        ("sweep_val.yaml", "bald_region", "region_error_level"),
        ("sweep_val_lookahead.yaml", "bald_lookahead", "lookahead_candidates"),
    ],
)
def test_the_val_sweep_overlays_merge_valid_and_pair_every_entry_with_its_twin(
    repo_root: Path, overlay: str, rule: str, key: str
) -> None:
    """Each val sweep overlay on top of real_large: every swept setting of the rule runs with
    its twin at the same setting, on val only, for the shipped head; every entry names its
    setting, so the sweep is the same whatever level the overlays beneath set."""
    from laplace_head.interactive.clicks import posterior_twin

    names = ["config.yaml", "real_dev.yaml", "real_large.yaml", overlay]
    config = load_configs([repo_root / "config" / name for name in names], check_paths=False)
    ablation = config["ablation"]
    assert ablation["splits"] == ["val"] and config["heads"] == [config["head"]["variant"]]
    policies = ablation["policies"]
    assert {"oracle", "random"} <= set(policies)
    swept = [p for p in policies if posterior_twin(p) is not None]
    assert len(swept) >= 3
    assert all(posterior_twin(p) in policies for p in swept)
    assert all(p.startswith(f"{rule}@{key}=") for p in swept)
