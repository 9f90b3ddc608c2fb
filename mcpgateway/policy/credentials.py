"""
Per-principal credentials: the secrets the C{secrets} section names, and
which of them principal P gets for service S (L{Credentials.for_principal})
as environment variables for a stdio child and as headers for a remote
upstream.

Which mapping applies: the principal's own (C{principals.<name>}), else
the first of its roles with one (C{roles.<role>}: its configured role, then
the roles its JWT carries, in order), else C{default}; the one found applies
whole, never merged with the others.  None: 403 C{no_credential}, and
nothing is started.

Loading reads files and so blocks: at start it runs before the reactor does
(L{Credentials.from_config}, a start error when anything is wrong); a reload
(L{Credentials.reload}, on SIGHUP) reads in a thread of the reactor's pool
and swaps the values in on the reactor.  A reload that fails keeps the old
values and logs why.  New values apply to children started afterwards.

Every value loaded goes to L{mcpgateway.lib.redact.SECRET_VALUES}, so the
logs, the audit log, error bodies and C{/metrics} never show it; so does a
credential a C{url} service's configured C{headers} carry (a header named
like a credential, e.g. C{Authorization: Bearer ${DOCS_MCP_TOKEN}}: the
whole value and the token after its scheme), which an upstream's error
text could otherwise echo to every caller.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from mcpgateway.config import GatewayConfig, ServiceConfig
from mcpgateway.config.audit import DEFAULT_REDACT_KEYS
from mcpgateway.config.secrets import SECRET_NAME, CredentialMapping, SecretSources, ServiceCredentials, template_names
from mcpgateway.config.values import ConfigError
from mcpgateway.errors import Forbidden
from mcpgateway.lib.redact import MIN_SECRET_LENGTH, SECRET_VALUES
from mcpgateway.observe.logs import logger
from mcpgateway.policy.auth import Principal

__all__ = ["Credential", "Credentials", "read_secrets"]

log = logger("mcpgateway.secrets")

_REFERENCE = re.compile(r"\{([^{}]*)\}")
#: The largest secrets file, and the largest secret in a directory.
MAX_FILE_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024
#: A configured header whose name matches one of these carries a credential.
_CREDENTIAL_HEADER = re.compile("|".join(fnmatch.translate(glob) for glob in DEFAULT_REDACT_KEYS), re.IGNORECASE)


def configured_header_secrets(services: Mapping[str, ServiceConfig]) -> list[tuple[str, str]]:
    """
    @return: C{(name, value)} for each credential in the C{url} services'
        configured C{headers}: the value of a header named like a credential
        (L{DEFAULT_REDACT_KEYS}), and the token after its scheme
        (C{Bearer}, C{Basic}...), each when long enough to redact.
    """
    found: list[tuple[str, str]] = []
    for service_name, service in services.items():
        for header, value in service.headers.items():
            if not _CREDENTIAL_HEADER.fullmatch(header):
                continue
            name = f"services.{service_name}.headers.{header}"
            scheme, space, token = value.strip().partition(" ")
            candidates = {value, value.strip(), token.strip() if space and scheme.isalpha() else ""}
            found.extend((name, candidate) for candidate in sorted(candidates) if len(candidate) >= MIN_SECRET_LENGTH)
    return found


@dataclass(frozen=True)
class Credential:
    """
    What one principal gets for one service.

    @ivar env: Environment variables for a stdio child.
    @ivar headers: HTTP headers for a remote upstream.
    @ivar granted: Which mapping gave it, e.g. C{principals.alice} (for logs).
    """

    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    granted: str = ""


def _read_file(path: str, uid: int) -> dict[str, str]:
    """
    Read C{secrets.file}: a JSON object of strings, mode 0600 or stricter,
    owned by C{uid}.  Checked on the open file, so it cannot be swapped
    between the check and the read.
    """
    where = f"secrets.file: {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise ConfigError(f"{where}: cannot open: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{where}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; "
                f"it must be 0600 or stricter (chmod 600 {path})"
            )
        if info.st_uid != uid:
            raise ConfigError(f"{where}: owned by uid {info.st_uid}, not by the gateway's user (uid {uid})")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        # The message may quote the file: say where, not what.
        raise ConfigError(f"{where}: not valid JSON (line {getattr(error, 'lineno', '?')})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object of secret name -> string")
    values: dict[str, str] = {}
    for name, value in raw.items():
        if not SECRET_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r}: a secret name is 1-128 of A-Z a-z 0-9 _ . -")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name}: expected a string")
        values[name] = value
    return values


def _read_directory(path: str) -> dict[str, str]:
    """
    Read C{secrets.directory}: each regular file (symbolic links followed,
    as Kubernetes mounts them) whose name is a secret name; hidden entries
    (Kubernetes' C{..data}) are skipped.  One trailing newline is dropped.
    """
    where = f"secrets.directory: {path}"
    values: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
    except OSError as error:
        raise ConfigError(f"{where}: cannot list: {error.strerror}") from None
    for entry in entries:
        if entry.name.startswith(".") or not SECRET_NAME.fullmatch(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=True):
                continue
            with open(entry.path, "rb") as handle:
                data = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as error:
            raise ConfigError(f"{where}/{entry.name}: cannot read: {error.strerror}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise ConfigError(f"{where}/{entry.name}: larger than {MAX_SECRET_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}/{entry.name}: not UTF-8 text") from None
        values[entry.name] = text.removesuffix("\n").removesuffix("\r")
    return values


def read_secrets(sources: SecretSources, environ: Mapping[str, str], uid: int) -> dict[str, str]:
    """
    Read every source (blocking: file system and environment).

    @param environ: The gateway's environment, for C{secrets.env}.
    @param uid: Who must own C{secrets.file}.
    @return: Secret name -> value.
    @raise ConfigError: For a source that cannot be read or is unsafe, or a
        name given by two sources.
    """
    found: dict[str, str] = {}
    origin: dict[str, str] = {}

    def add(values: Mapping[str, str], source: str) -> None:
        for name, value in values.items():
            if name in found:
                raise ConfigError(f"{source}: secret {name!r} is also given by {origin[name]}")
            found[name] = value
            origin[name] = source

    if sources.file:
        add(_read_file(sources.file, uid), "secrets.file")
    if sources.directory:
        add(_read_directory(sources.directory), "secrets.directory")
    for name, variable in sources.env.items():
        if variable not in environ:
            raise ConfigError(f"secrets.env.{name}: the environment variable {variable} is not set")
        add({name: environ[variable]}, f"secrets.env.{name}")
    return found


class Credentials:
    """
    The loaded secrets and the services' C{credentials}: the credential of a
    principal for a service.

    @ivar values: The loaded secrets, by name.
    """

    def __init__(
        self,
        services: Mapping[str, ServiceConfig],
        sources: SecretSources | None,
        environ: Mapping[str, str] | None = None,
        uid: int | None = None,
    ) -> None:
        """
        Nothing is read until L{load}.

        @param environ: For C{secrets.env}; C{os.environ} if L{None}.
        @param uid: Who must own C{secrets.file}; the gateway's if L{None}.
        """
        self._services: dict[str, ServiceCredentials] = {
            name: service.credentials for name, service in services.items() if service.credentials is not None
        }
        self._configured = configured_header_secrets(services)
        self._sources = sources
        self._environ = environ
        self._uid = uid
        self.values: Mapping[str, str] = {}
        self._loaded: dict[str, str] = {}
        self._reloading: Deferred[bool] | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Credentials:
        """
        Load the secrets now (blocking; at start, before the reactor runs).

        @raise ConfigError: If a source cannot be read or is unsafe, or a
            service references a secret no source gives.
        """
        credentials = cls(config.services, config.secrets)
        credentials.load()
        return credentials

    def _read(self) -> dict[str, str]:
        if self._sources is None:
            return {}
        environ = os.environ if self._environ is None else self._environ
        values = read_secrets(self._sources, environ, os.geteuid() if self._uid is None else self._uid)
        self._check(values)
        return values

    def _check(self, values: Mapping[str, str]) -> None:
        for service in self._services.values():
            for mapping in service.mappings():
                for name, path in mapping.secret_names().items():
                    if name not in values:
                        raise ConfigError(f"{path}: no source gives a secret named {name!r}")
                    if len(values[name]) < MIN_SECRET_LENGTH:
                        raise ConfigError(
                            f"{path}: secret {name!r} is shorter than {MIN_SECRET_LENGTH} characters "
                            "(too short to redact from logs safely)"
                        )
                    if any(c in values[name] for c in "\0\r\n"):
                        raise ConfigError(f"{path}: secret {name!r} holds a line break or NUL")
                for header, template in mapping.headers.items():
                    for name in template_names(template):
                        value = values[name]
                        if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                            raise ConfigError(
                                f"{mapping.path}.headers.{header}: secret {name!r} is not printable ASCII "
                                "(an HTTP header value cannot carry it)"
                            )

    def _install(self, values: dict[str, str]) -> None:
        self.values = values
        # Values a reload replaced stay redacted: older children still hold them.
        self._loaded.update({value: name for name, value in values.items()})
        SECRET_VALUES.set(self, [*self._configured, *((name, value) for value, name in self._loaded.items())])

    def load(self) -> None:
        """
        Read the secrets now (blocking).

        @raise ConfigError: As L{from_config}.
        """
        self._install(self._read())

    def reload(self) -> Deferred[bool]:
        """
        Read the secrets again, in a thread; children started afterwards get
        the new values.  A failure keeps the old values and is logged.
        Reloads run one at a time: one asked for while another reads starts
        when it ends, so the last one asked for reads last.

        @return: Fires with whether the new values are in use.
        """
        done: Deferred[bool] = Deferred()
        previous = self._reloading
        if previous is None or previous.called:
            self._run_reload(done)
        else:

            def then(result: object) -> object:
                self._run_reload(done)
                return result

            previous.addBoth(then)
        self._reloading = done
        return done

    def _run_reload(self, done: Deferred[bool]) -> None:
        def loaded(values: dict[str, str]) -> bool:
            self._install(values)
            log.info("secrets reloaded: {count} secrets; new children get them", count=len(values))
            return True

        def failed(failure: Failure) -> bool:
            why = failure.getErrorMessage() if failure.check(ConfigError) else repr(failure.value)
            log.warn("secrets reload failed, the old secrets stay in use: {why}", why=why)
            return False

        deferToThread(self._read).addCallbacks(loaded, failed).chainDeferred(done)

    def stop(self) -> None:
        """
        Forget the values (tests start several gateways in one process).
        """
        SECRET_VALUES.forget(self)

    def applies(self, service: str) -> bool:
        """
        @return: Whether C{service} has per-principal credentials (its
            children then belong to one principal each).
        """
        return service in self._services

    def hidden(self) -> Collection[str]:
        """
        @return: Every loaded secret value: no child inherits or is
            configured one except as its principal's credential.
        """
        return self.values.values()

    def for_principal(self, service: str, principal: Principal) -> Credential:
        """
        @return: C{principal}'s credential for C{service} (empty if the
            service has no C{credentials}).
        @raise Forbidden: C{no_credential} if none is mapped to C{principal}.
        """
        config = self._services.get(service)
        if config is None:
            return Credential()
        mapping = config.principals.get(principal.name)
        if mapping is None:
            for role in (principal.role, *principal.roles):
                mapping = config.roles.get(role)
                if mapping is not None:
                    break
        if mapping is None:
            mapping = config.default
        if mapping is None:
            raise Forbidden(
                f"{principal.name} has no credential for service {service!r}", "no_credential", service=service
            )
        return self._credential(mapping)

    def for_listing(self, service: str) -> Credential:
        """
        @return: The credential of a child started only to list C{service}'s
            tools: the C{default} mapping's, else none (never a principal's
            or a role's).
        """
        config = self._services.get(service)
        if config is None or config.default is None:
            return Credential()
        return self._credential(config.default)

    def _credential(self, mapping: CredentialMapping) -> Credential:
        values = self.values
        headers = {
            header: _REFERENCE.sub(lambda match: values[match.group(1)], template)
            for header, template in mapping.headers.items()
        }
        return Credential({var: values[name] for var, name in mapping.env.items()}, headers, mapping.path)
