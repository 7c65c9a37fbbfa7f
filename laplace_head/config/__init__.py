"""The workflow configuration: loading, schema defaults and validation (one message per key)."""

from laplace_head.config.loader import (
    SCHEMA_PATH,
    ConfigError,
    fill_defaults,
    load_config,
    load_configs,
    load_schema,
    schema_markdown,
    update_readme,
    validate_config,
)

__all__ = [
    "SCHEMA_PATH",
    "ConfigError",
    "fill_defaults",
    "load_config",
    "load_configs",
    "load_schema",
    "schema_markdown",
    "update_readme",
    "validate_config",
]
