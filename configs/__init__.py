"""The shipped configs (presets, recipes, launcher configs): YAML package data, installed as `bert.configs`."""
