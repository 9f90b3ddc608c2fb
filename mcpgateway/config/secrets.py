"""
The C{secrets} section (where credentials come from) and each service's
C{credentials} (which secret a principal's child or request gets), as
frozen data.  L{mcpgateway.policy.credentials} loads the secrets and answers
"the credential of principal P for service S".

Sources
=======

C{secrets.file} is a JSON object of secret name -> string (its mode must
be 0600 or stricter and its owner the gateway's user, checked when it is
read); C{secrets.directory} holds one secret per file, named by the file (as
Docker and Kubernetes mount them); C{secrets.env} maps a secret name to the
gateway's environment variable holding it.  A name given by two sources is
an error.

Credentials
===========

C{services.<name>.credentials} has C{principals} (by principal name),
C{roles} (by role) and C{default}, each a I{mapping}:
C{{"env": {"VAR": "secret-name"}, "headers": {"Header": "template"}}}.  A
header's template is a secret name, or a text with C{{secret-name}}
references, e.g. C{"Bearer {alice-github}"}.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpgateway.config.sandbox import always_removed
from mcpgateway.config.values import ConfigError, Reader, kind, section, string

__all__ = [
    "SECRET_NAME",
    "CredentialMapping",
    "SecretSources",
    "ServiceCredentials",
    "credentials_from_config",
    "secrets_from_config",
    "template_names",
]

#: A secret's name: also a file name in C{secrets.directory}.
SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
#: Headers the HTTP client sets itself.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "content-type"})
_REFERENCE = re.compile(r"\{([^{}]*)\}")
_PRINCIPAL = re.compile(r"[^\x00-\x20\x7f]{1,256}")


@dataclass(frozen=True)
class SecretSources:
    """
    The C{secrets} section.

    @ivar file: A JSON file of name -> value, or C{""}.
    @ivar directory: A directory of one secret per file, or C{""}.
    @ivar env: Secret name -> the gateway's environment variable holding it.
    """

    file: str = ""
    directory: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CredentialMapping:
    """
    What one principal, role or the default gets.

    @ivar env: A stdio child's environment variable -> secret name.
    @ivar headers: A remote upstream's header -> template (secret names in braces).
    @ivar path: Where it is in the configuration.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    def secret_names(self) -> dict[str, str]:
        """
        @return: Each secret name it references -> the key path referencing it.
        """
        names = {name: f"{self.path}.env.{var}" for var, name in self.env.items()}
        for header, template in self.headers.items():
            for name in template_names(template):
                names.setdefault(name, f"{self.path}.headers.{header}")
        return names


@dataclass(frozen=True)
class ServiceCredentials:
    """
    One service's C{credentials}: the most specific mapping applies whole
    (a principal's, else its role's, else the default); they are never merged.
    """

    principals: Mapping[str, CredentialMapping] = field(default_factory=dict)
    roles: Mapping[str, CredentialMapping] = field(default_factory=dict)
    default: CredentialMapping | None = None

    def mappings(self) -> list[CredentialMapping]:
        """
        @return: Every mapping it holds.
        """
        found = [*self.principals.values(), *self.roles.values()]
        return found + ([self.default] if self.default is not None else [])


def template_names(template: str) -> list[str]:
    """
    @return: The secret names a header template references.
    """
    return _REFERENCE.findall(template)


def _secret_name(value: Any, path: str, environ: Mapping[str, str]) -> str:
    name = string(value, path, environ)
    if not SECRET_NAME.fullmatch(name):
        raise ConfigError(f"{path}: a secret name is 1-128 of A-Z a-z 0-9 _ . - (not starting with . or -)")
    return name


def _env_names(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object of secret name -> environment variable, got {kind(value)}")
    result: dict[str, str] = {}
    for name, variable in value.items():
        where = f"{path}.{name}"
        _secret_name(name, where, environ)
        result[name] = string(variable, where, environ)
        if not _ENV_NAME.fullmatch(result[name]):
            raise ConfigError(f"{where}: not an environment variable name: {result[name]!r}")
    return result


def _path(value: Any, path: str, environ: Mapping[str, str]) -> str:
    text = string(value, path, environ)
    if not text:
        raise ConfigError(f"{path}: expected a path, got an empty string")
    return text


_SOURCES: dict[str, Reader] = {"file": _path, "directory": _path, "env": _env_names}


def secrets_from_config(value: Any, path: str, environ: Mapping[str, str]) -> SecretSources:
    """
    Read the C{secrets} section.

    @raise ConfigError: Naming the key that is wrong.
    """
    sources = SecretSources(**section(value, path, environ, _SOURCES))
    if not (sources.file or sources.directory or sources.env):
        raise ConfigError(f"{path}: give at least one of file, directory or env")
    return sources


def _child_env(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object of environment variable -> secret name, got {kind(value)}")
    result: dict[str, str] = {}
    for variable, name in value.items():
        where = f"{path}.{variable}"
        if not _ENV_NAME.fullmatch(variable):
            raise ConfigError(f"{where}: not an environment variable name")
        if always_removed(variable):
            raise ConfigError(f"{where}: the sandbox never passes {variable} to a child")
        result[variable] = _secret_name(name, where, environ)
    return result


def _headers(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f'{path}: expected an object of header -> "secret-name" or "text {{secret-name}}"')
    result: dict[str, str] = {}
    for header, raw in value.items():
        where = f"{path}.{header}"
        if not _HEADER_NAME.fullmatch(header):
            raise ConfigError(f"{where}: not an HTTP header name")
        if header.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"{where}: the gateway sets {header} itself")
        template = string(raw, where, environ)
        if "{" not in template and "}" not in template:
            template = "{" + _secret_name(template, where, environ) + "}"
        names = template_names(template)
        if not names or _REFERENCE.sub("", template).count("{") or _REFERENCE.sub("", template).count("}"):
            raise ConfigError(f"{where}: expected a secret name or a text with {{secret-name}} references")
        for name in names:
            _secret_name(name, where, environ)
        if any(c in _REFERENCE.sub("", template) for c in "\r\n\0"):
            raise ConfigError(f"{where}: a header value may not hold line breaks")
        result[header] = template
    return result


_MAPPING: dict[str, Reader] = {"env": _child_env, "headers": _headers}


def _mapping(value: Any, path: str, environ: Mapping[str, str]) -> CredentialMapping:
    entry = CredentialMapping(**section(value, path, environ, _MAPPING), path=path)
    if not entry.env and not entry.headers:
        raise ConfigError(f"{path}: give env and/or headers")
    return entry


def _mappings(value: Any, path: str, environ: Mapping[str, str]) -> dict[str, CredentialMapping]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object keyed by name, got {kind(value)}")
    result: dict[str, CredentialMapping] = {}
    for key, entry in value.items():
        where = f"{path}.{key}"
        if not _PRINCIPAL.fullmatch(key):
            raise ConfigError(f"{where}: a name is 1-256 characters, no spaces or control characters")
        result[key] = _mapping(entry, where, environ)
    return result


_CREDENTIALS: dict[str, Reader] = {"principals": _mappings, "roles": _mappings, "default": _mapping}


def credentials_from_config(value: Any, path: str, environ: Mapping[str, str]) -> ServiceCredentials:
    """
    Read a service's C{credentials}.

    @raise ConfigError: Naming the key that is wrong.
    """
    credentials = ServiceCredentials(**section(value, path, environ, _CREDENTIALS))
    if not credentials.mappings():
        raise ConfigError(f"{path}: give principals, roles and/or default")
    return credentials
