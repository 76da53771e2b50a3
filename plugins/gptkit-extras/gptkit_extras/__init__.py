"""Extra components for gptkit, one module per kind. gptkit finds them through this package's entry
points (see pyproject.toml); importing this package registers nothing by itself."""
