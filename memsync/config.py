"""Configuration, validated once at the edge.

:class:`MemsyncConfig` is a plain pydantic model the library takes as a typed
object. :func:`load_config` is the edge: it merges a TOML file, ``MEMSYNC_*``
variables from a mapping the caller passes (the CLI passes ``os.environ``) and
explicit overrides, in that order of increasing priority. Nested keys use a
double underscore: ``MEMSYNC_GRAPH__URI``. Errors name the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from memsync.errors import ConfigError

ENV_PREFIX = "MEMSYNC_"
DEFAULT_CONFIG_FILE = Path("memsync.toml")


def redact_url(url: str) -> str:
    """The URL with any password (``user:pw@`` or ``?password=``) replaced by ***."""
    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """A NUL can reach no path, URL or driver; refuse it here, where the error names the key."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str | PurePath) and "\x00" in str(text):
            raise ValueError("must not contain a NUL character")
        return value

    def __repr_args__(self) -> Any:
        """Like pydantic's, with URL credentials redacted (SecretStr fields already are)."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_FIELDS and isinstance(value, str) else value


_URL_FIELDS = frozenset({"log_url", "url", "uri"})


class VectorConfig(_Section):
    backend: str = "edge"  # "edge" (Qdrant Edge, embedded) or "qdrant" (qdrant-client)
    collection: str = "memsync_memories"
    url: str | None = None  # Qdrant server URL; with backend "qdrant" and no url, local mode at `path`
    api_key: SecretStr | None = None
    path: Path | None = None  # overrides <data-dir>/qdrant
    dimension: int | None = Field(default=None, gt=0)
    distance: Literal["cosine", "dot", "euclid"] = "cosine"
    timeout: float = Field(default=10.0, gt=0)


class GraphConfig(_Section):
    backend: str = "ladybug"  # "ladybug" (embedded), "neo4j", or "none"
    uri: str | None = None  # bolt://host:7687
    user: str = "neo4j"
    password: SecretStr | None = None
    database: str | None = None
    path: Path | None = None  # overrides <data-dir>/graph
    timeout: float = Field(default=10.0, gt=0)


class ProjectorConfig(_Section):
    batch_size: int = Field(default=1000, gt=0)
    max_attempts: int = Field(default=5, gt=0)  # before an event is parked
    backoff_initial: float = Field(default=0.05, ge=0)
    backoff_max: float = Field(default=5.0, ge=0)
    poll_interval: float = Field(default=0.005, gt=0)


class FacadeConfig(_Section):
    # inline: the facade projects into its stores after each write (read-your-writes; embedded default)
    # wait:   each write waits until a follower (another process) has projected it
    # async:  writes return once the log has them; the stores catch up on their own
    consistency: Literal["inline", "wait", "async"] = "inline"
    wait_timeout: float = Field(default=10.0, gt=0)
    embedder: str = "auto"  # minilm (memsync[embed]), lexical (not semantic), none, auto


class MemsyncConfig(_Section):
    data_dir: Path = Path(".memsync")
    log_url: str | None = None  # sqlite:///path or postgresql://...; default <data-dir>/events.db
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    single_store_mode: bool = False  # graph projection off
    vector: VectorConfig = VectorConfig()
    graph: GraphConfig = GraphConfig()
    projector: ProjectorConfig = ProjectorConfig()
    facade: FacadeConfig = FacadeConfig()

    @field_validator("log_url")
    @classmethod
    def _known_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return url

    @property
    def resolved_log_url(self) -> str:
        return self.log_url or f"sqlite:///{self.data_dir / 'events.db'}"

    @property
    def graph_enabled(self) -> bool:
        return not self.single_store_mode and self.graph.backend != "none"

    def secrets(self) -> list[str]:
        """Every secret value in this config (for redaction; never print them)."""
        out = [s.get_secret_value() for s in (self.vector.api_key, self.graph.password) if s is not None]
        for url in (self.log_url, self.graph.uri, self.vector.url):
            for match in re.finditer(r"(?i)[?&]password=([^&#]*)", url or ""):
                out.append(match.group(1))
            if url and "://" in url and "@" in url:
                credentials = url.split("://", 1)[1].rsplit("@", 1)[0]
                if ":" in credentials:
                    out.append(credentials.split(":", 1)[1])
        return out

    def vector_path(self) -> Path:
        return self.vector.path or self.data_dir / "qdrant"

    def graph_path(self) -> Path:
        return self.graph.path or self.data_dir / "graph"


def load_config(
    file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> MemsyncConfig:
    """Merge TOML file < environment < overrides and validate once."""
    data: dict[str, Any] = {}
    path = file if file is not None else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path}: {e}") from None
        except RecursionError:
            raise ConfigError(f"config file {path}: nested too deeply") from None
        except OSError as e:  # a directory, no permission, an I/O error
            raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    for key, value in (env or {}).items():
        keys = key[len(ENV_PREFIX) :].lower().split("__")
        # other tools share the prefix (e.g. test harness settings): only known top-level keys are ours
        if key.startswith(ENV_PREFIX) and value != "" and keys[0] in MemsyncConfig.model_fields:
            _set_path(data, keys, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key.split("."), value)
    try:
        return MemsyncConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is not a section")
        data = child
    data[keys[-1]] = value


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{key}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)
