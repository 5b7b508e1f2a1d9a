"""Where Hydra looks for configs: user config dirs first, then the built-in `pkg://neurons.conf`.

Order, highest priority first: `--config-dir DIR` (Hydra's own flag; CLI) or `config_dir=` (API),
every directory in `$NEURONS_CONFIG_DIR` (os.pathsep-separated, left first), then `./conf` in the
current directory, then the installed package. A file in a user dir overrides a built-in file of
the same name (`conf/arch/mlp_plain.yaml`) and adds new options (`conf/arch/my_net.yaml`).
This module only edits the search path and the override list; it composes nothing itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

BUILTIN = "pkg://neurons.conf"
ENV_VAR = "NEURONS_CONFIG_DIR"
PROVIDER = "neurons-user"
# Overrides whose `+`/`++` prefix is dropped: these groups sit in the defaults list as `null`, so
# `+debug=fast` means the same as `debug=fast`, and an unknown name gets Hydra's list of options.
_NULL_DEFAULT_GROUPS = ("debug",)


class ConfigDirError(FileNotFoundError):
    """A config directory named by `--config-dir`, `config_dir=` or the environment is missing."""


def builtin_dir() -> Path:
    """The directory of the installed `neurons.conf` package (the built-in config groups)."""
    import neurons.conf

    return Path(neurons.conf.__file__).resolve().parent


def user_config_dirs(config_dir: str | os.PathLike | None = None) -> list[Path]:
    """User config dirs in search order (absolute). Named dirs must exist; `./conf` may not."""
    named: list[tuple[str, str]] = []
    if config_dir is not None:
        named.append(("--config-dir", os.fspath(config_dir)))
    env = os.environ.get(ENV_VAR, "")
    named += [(f"${ENV_VAR}", p) for p in env.split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for origin, raw in named:
        path = Path(raw).expanduser().resolve()
        if not path.is_dir():
            raise ConfigDirError(
                f"{origin}: expected a config directory, found no directory at {raw!r}"
            )
        out.append(path)
    local = Path.cwd() / "conf"
    if local.is_dir():
        out.append(local.resolve())
    builtin = builtin_dir()
    unique: list[Path] = []
    for p in out:  # the checkout's own conf/ is the built-in tree: never list it twice
        if p != builtin and p not in unique:
            unique.append(p)
    return unique


class NeuronsSearchPathPlugin(SearchPathPlugin):
    """Prepends the user config dirs before the built-in groups, for neurons' own searches only.

    Registered in-process by `install()` (never through the global `hydra_plugins` namespace),
    and inert for any search path whose primary configs are not `pkg://neurons.conf`.
    """

    config_dir: ClassVar[str | None] = None  # set by the CLI (`--config-dir`) or the API

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(e.path == BUILTIN for e in search_path.get_path()):
            return
        for d in user_config_dirs(type(self).config_dir):
            search_path.prepend(
                provider=PROVIDER, path=f"file://{d}", anchor=SearchPathQuery(path=BUILTIN)
            )


def install(config_dir: str | os.PathLike | None = None) -> None:
    """Register the plugin (once per process) and set the `--config-dir` directory (or None)."""
    NeuronsSearchPathPlugin.config_dir = None if config_dir is None else os.fspath(config_dir)
    plugins = Plugins.instance()
    if NeuronsSearchPathPlugin not in plugins.discover(SearchPathPlugin):
        plugins.register(NeuronsSearchPathPlugin)


def split_config_dir(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take Hydra's `--config-dir DIR` / `--config-dir=DIR` / `-cd DIR` out of a command line.

    Returns (the directory or None, the remaining arguments). Hydra itself would search that
    directory *after* the built-in configs; `NeuronsSearchPathPlugin` puts it first instead.
    """
    rest: list[str] = []
    found: str | None = None
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        if a in ("--config-dir", "-cd"):
            if i + 1 >= len(args):
                raise ConfigDirError(f"{a}: expected a directory after it, found nothing")
            found, i = args[i + 1], i + 2
            continue
        if a.startswith("--config-dir="):
            found = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return found, rest


def normalize_overrides(overrides: Sequence[str]) -> list[str]:
    """`+debug=fast` / `++debug=fast` -> `debug=fast` (see `_NULL_DEFAULT_GROUPS`)."""
    out = []
    for o in overrides:
        bare = o.lstrip("+")
        key = bare.split("=", 1)[0]
        out.append(bare if o.startswith("+") and key in _NULL_DEFAULT_GROUPS else o)
    return out
