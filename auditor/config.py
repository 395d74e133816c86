"""Configuration from `pyproject.toml [tool.auditor]`, `setup.cfg [auditor]` or `--config`.

Keys mirror the long options. Unknown keys are an error (exit 2), not silently ignored: a
typo in a CI gate's config must not switch checks off. `trust` is deliberately not a config
key: a repository must not be able to make `auditor` run code just by being checked.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path
from typing import Any



def _tomllib():
    """Imported only when a TOML file is read (start-up time matters in pre-commit hooks)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    return tomllib


class ConfigError(Exception):
    """Invalid configuration: one line, exit 2."""


LIST_KEYS = {"select", "ignore", "extend-select", "extend-ignore", "exclude", "extend-exclude"}
SCALAR_KEYS = {"fail-on", "format", "output", "jobs", "num-classes", "pretrained", "framework", "timeout", "sample", "quiet", "cache"}
KNOWN_KEYS = LIST_KEYS | SCALAR_KEYS | {"per-file-ignores"}


class Config:
    def __init__(self, values: dict[str, Any] | None = None, per_file_ignores: list[tuple[str, list[str]]] | None = None, source: Path | None = None):
        self.values = values or {}
        self.per_file_ignores = per_file_ignores or []
        self.source = source

    @property
    def root(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _normalise_keys(table: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for key, value in table.items():
        norm = key.replace("_", "-").lower()
        if norm == "trust":
            raise ConfigError(f"{where}: 'trust' cannot be set in configuration; pass --trust on the command line")
        if norm not in KNOWN_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
        out[norm] = value
    return out


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ConfigError(f"expected a list or comma-separated string, got {value!r}")


def _from_toml(path: Path, explicit: bool) -> Config | None:
    tomllib = _tomllib()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    table = data.get("tool", {}).get("auditor")
    if table is None:
        if not explicit:
            return None
        table = data.get("auditor", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.auditor] must be a table")
    values = _normalise_keys(table, str(path))
    pfi_raw = values.pop("per-file-ignores", {}) or {}
    if not isinstance(pfi_raw, dict):
        raise ConfigError(f"{path}: per-file-ignores must be a table of glob = [codes]")
    pfi = [(glob, _split(codes)) for glob, codes in pfi_raw.items()]
    return Config(_clean(values, path), pfi, path)


def _from_ini(path: Path, explicit: bool) -> Config | None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: invalid configuration: {str(exc).splitlines()[0]}") from None
    section = next((s for s in ("auditor", "tool:auditor") if parser.has_section(s)), None)
    if section is None:
        if explicit:
            raise ConfigError(f"{path}: no [auditor] section")
        return None
    values = _normalise_keys(dict(parser.items(section)), str(path))
    pfi: list[tuple[str, list[str]]] = []
    for line in str(values.pop("per-file-ignores", "")).splitlines():
        if not line.strip():
            continue
        glob, sep, codes = line.partition(":")
        if not sep:
            raise ConfigError(f"{path}: per-file-ignores line {line.strip()!r} must be 'glob: CODES'")
        pfi.append((glob.strip(), _split(codes)))
    return Config(_clean(values, path), pfi, path)


def _clean(values: dict[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in LIST_KEYS:
            out[key] = _split(value)
        elif key in ("jobs", "num-classes"):
            try:
                out[key] = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: {key} must be an integer, got {value!r}") from None
        elif key in ("quiet", "cache"):
            out[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        else:
            out[key] = value
    return out


def load_config(explicit: str | None = None, start: Path | None = None) -> Config:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{explicit}: configuration file not found")
        loader = _from_toml if path.suffix == ".toml" else _from_ini
        config = loader(path, True)
        assert config is not None
        return config
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        for name, loader in (("pyproject.toml", _from_toml), ("setup.cfg", _from_ini)):
            candidate = directory / name
            if candidate.is_file():
                config = loader(candidate, False)
                if config is not None:
                    return config
        if (directory / ".git").exists():
            break
    return Config()
