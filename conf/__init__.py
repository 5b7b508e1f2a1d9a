"""The built-in Hydra config tree, installed as the package `neurons.conf` (see pyproject.toml).

Only YAML files live here; Hydra reads them through `pkg://neurons.conf`. User config dirs
(`./conf`, `--config-dir`, `$NEURONS_CONFIG_DIR`) are searched before it (`neurons.searchpath`).
"""
