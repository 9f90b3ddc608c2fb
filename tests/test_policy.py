"""
Governance: the per-tool policy (C{policy}) and the call budgets
(C{budgets}), end to end on both doors with several principals, and their
configuration errors.

One table (L{CASES}) drives the REST listing, the REST call, the MCP
C{tools/list} and the MCP C{tools/call} (official SDK client): a hidden tool
is absent from every list and refused everywhere with the same code.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import pytest_twisted
from mcp import MCPError
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from mcpgateway.calls import CallRequest
from mcpgateway.config import ConfigError, parse_config
from mcpgateway.errors import BudgetExhausted, Forbidden
from mcpgateway.observe.logs import configure
from mcpgateway.policy.auth import Principal, hash_token
from mcpgateway.policy.budgets import BudgetPolicy
from mcpgateway.policy.rules import RulePolicy
from mcpgateway.runtime import Governance
from mcpgateway.tap import Options, StartRefused

from .conftest import fixture_service
from .redis_fixture import redis_server_at
from .test_mcp_front import MODES, connect, in_thread

TOKENS = {name: f"{name}-token-0123456789" for name in ("alice", "bob", "carol", "dave", "root")}
ROLES = {"alice": "agent", "bob": "agent", "carol": "agent", "dave": "agent", "root": "admin"}
SERVER = {
    "principals": [
        {"name": name, "role": ROLES[name], "token_hash": hash_token(token)} for name, token in TOKENS.items()
    ]
}
SERVICES = {"fx": fixture_service(), "fx2": fixture_service()}

POLICY = {
    "default": "deny",
    "rules": [
        {"roles": ["admin"], "allow": ["*"]},
        {
            "principals": ["alice"],
            "allow": ["fx/echo", "fx/add", "fx/count*"],
            "deny": ["fx/counter"],
            "arguments": {"fx/echo": {"text": {"prefix": "ok:", "max_length": 20}}},
        },
        {"principals": ["bob"], "allow": ["fx", "fx2/echo"], "deny": ["fx/fail"]},
        {"roles": ["agent"], "deny": ["*/crash", "*/spawn_grandchild"]},
        {"principals": ["dave"], "allow": ["fx2/no_such_*"]},
    ],
}

OK, TOOL, ARGUMENT = "ok", "forbidden_tool", "forbidden_argument"

#: (principal, service, tool, arguments, expected): C{ok} (admitted and run)
#: or the 403 code.  A tool is listed exactly when it is not C{forbidden_tool}.
CASES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("alice", "fx", "echo", {"text": "ok: hi"}, OK),
    ("alice", "fx", "echo", {"text": "hi"}, ARGUMENT),  # prefix
    ("alice", "fx", "echo", {}, ARGUMENT),  # a constrained argument is required
    ("alice", "fx", "echo", {"text": 7}, ARGUMENT),  # and must be a string
    ("alice", "fx", "echo", {"text": "ok:" + "x" * 30}, ARGUMENT),  # max_length
    ("alice", "fx", "add", {"a": 1, "b": 2}, OK),
    ("alice", "fx", "counter", {}, TOOL),  # deny wins over allow fx/count*
    ("alice", "fx", "pid", {}, TOOL),  # not on her allow list
    ("alice", "fx", "no_such_tool", {}, TOOL),  # refused before any child is asked
    ("alice", "fx2", "echo", {"text": "ok: x"}, TOOL),
    ("bob", "fx", "echo", {"text": "no prefix"}, OK),  # alice's constraint is hers
    ("bob", "fx", "counter", {}, OK),
    ("bob", "fx", "fail", {}, TOOL),
    ("bob", "fx", "crash", {}, TOOL),  # the agent role's deny applies next to his allow list
    ("bob", "fx2", "echo", {"text": "b"}, OK),
    ("bob", "fx2", "add", {"a": 1, "b": 1}, TOOL),
    ("carol", "fx", "echo", {"text": "ok: c"}, TOOL),  # no allow list: default deny
    ("root", "fx", "fail", {}, OK),  # admins by their rule; fail is a tool error, not a refusal
    ("root", "fx2", "counter", {}, OK),
]


def bearer(name: str) -> dict[str, Any]:
    return {"auth": None, "headers": {b"Authorization": [f"Bearer {TOKENS[name]}".encode()]}}


@pytest.fixture
def governed(live: Any, make_config: Callable[..., dict[str, Any]]) -> Iterator[Callable[..., Any]]:
    """
    Start a gateway whose policies are built from its configuration as
    C{makeService} builds them (L{Governance}); returns C{(gateway, governance)}.
    """
    made: list[Governance] = []

    def start(services: dict[str, Any], **sections: Any) -> tuple[Any, Governance]:
        config = parse_config(make_config(services, **copy.deepcopy(sections)))
        governance = Governance.from_config(config)
        made.append(governance)
        gw = live(services, app_options={"policies": governance.policies}, **copy.deepcopy(sections))
        return gw, governance

    yield start
    for governance in made:
        governance.close()


async def call(gw: Any, who: str, service: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """
    C{POST /services/<service>/call} as C{who}, in session C{s-<who>}; returns C{(response, body)}.
    """
    body = {"tool": tool, "session_id": f"s-{who}", "arguments": arguments or {}}
    return await gw.request("POST", f"/services/{service}/call", body, **bearer(who))


async def rest_listing(gw: Any, who: str, service: str) -> set[str]:
    response, body = await gw.request("GET", f"/services/{service}/tools", **bearer(who))
    assert response.code == 200, body
    return {tool["name"] for tool in body["tools"]}


async def mcp_use(url: str, mode: str, who: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[set[str], list[Any]]:
    """
    As C{who}: list the tools, then make each call; returns the names and,
    per call, the result or the L{MCPError}'s error.
    """
    outcomes: list[Any] = []
    async with connect(url, mode, authorization=f"Bearer {TOKENS[who]}") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        for name, arguments in calls:
            try:
                outcomes.append(await client.call_tool(name, arguments))
            except MCPError as error:
                outcomes.append(error.error)
    return names, outcomes


# -- one decision, both doors --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_one_decision_on_every_list_and_call_of_both_doors(governed: Any, mode: str) -> None:
    gw, _ = governed(SERVICES, server=SERVER, policy=POLICY)
    principals = sorted({case[0] for case in CASES})

    for who, service, tool, arguments, expected in CASES:
        listed = tool in await rest_listing(gw, who, service)
        assert listed == (expected != TOOL and tool != "no_such_tool"), (who, service, tool)
        response, body = await call(gw, who, service, tool, arguments)
        if expected == OK:
            assert response.code == 200, (who, service, tool, body)
        else:
            assert (response.code, body["code"]) == (403, expected), (who, service, tool, body)
            assert (body["service"], body["tool"]) == (service, tool)
            if expected == ARGUMENT:
                assert body["argument"] == "text"

    for who in principals:
        rows = [case for case in CASES if case[0] == who]
        names, outcomes = await in_thread(
            mcp_use(gw.url + "/mcp", mode, who, [(f"{service}.{tool}", args) for _, service, tool, args, _ in rows])
        )
        for (_, service, tool, _, expected), outcome in zip(rows, outcomes, strict=True):
            where = (who, service, tool)
            assert (f"{service}.{tool}" in names) == (expected != TOOL and tool != "no_such_tool"), where
            if expected == OK:
                assert isinstance(outcome, types.CallToolResult), (where, outcome)
            else:
                assert outcome.code == -32602, (where, outcome)  # a request to change, not to retry
                assert (outcome.data["reason"], outcome.data["status"]) == (expected, 403), where
                assert (outcome.data["service"], outcome.data["tool"]) == (service, tool), where

    # The whole lists, on both doors.
    expected_lists = {
        "alice": {"fx": {"echo", "add"}, "fx2": set()},
        "carol": {"fx": set(), "fx2": set()},
        "dave": {"fx": set(), "fx2": set()},
    }
    for who, lists in expected_lists.items():
        for service, tools in lists.items():
            assert await rest_listing(gw, who, service) == tools, (who, service)
        names, _ = await in_thread(mcp_use(gw.url + "/mcp", mode, who, []))
        assert names == {f"{service}.{tool}" for service, tools in lists.items() for tool in tools}, who
    bob_fx = await rest_listing(gw, "bob", "fx")
    root_fx = await rest_listing(gw, "root", "fx")
    assert root_fx - bob_fx == {"fail", "crash", "spawn_grandchild"}
    assert await rest_listing(gw, "bob", "fx2") == {"echo"}


@pytest_twisted.ensureDeferred
async def test_services_list_only_what_the_caller_may_see(governed: Any) -> None:
    gw, _ = governed(SERVICES, server=SERVER, policy=POLICY)

    async def services(who: str) -> set[str]:
        response, body = await gw.request("GET", "/services", **bearer(who))
        assert response.code == 200, body
        return set(body)

    # Without tool lists, from the rules alone; nothing is started to tell.
    assert await services("alice") == {"fx"}
    assert await services("bob") == {"fx", "fx2"}
    assert await services("root") == {"fx", "fx2"}
    assert await services("carol") == set()
    assert await services("dave") == {"fx2"}  # fx2/no_such_* might match a tool
    assert all(service.spawns == 0 for service in gw.gateway.services.values())

    # A service nothing of which is visible is listed empty without a child.
    response, body = await gw.request("GET", "/services/fx/tools", **bearer("carol"))
    assert (response.code, body) == (200, {"service": "fx", "tools": []})
    response, body = await call(gw, "carol", "fx", "echo", {"text": "x"})
    assert (response.code, body["code"]) == (403, "forbidden_tool")
    assert gw.gateway.services["fx"].spawns == 0
    response, _ = await gw.request("GET", "/services/nope/tools", **bearer("carol"))
    assert response.code == 404

    # Once fx2's tool list is cached, dave's pattern is seen to match none of its tools.
    await rest_listing(gw, "root", "fx2")
    assert await services("dave") == set()
    assert await services("bob") == {"fx", "fx2"}

    # The MCP endpoint's instructions name only the visible services.
    async def instructions(who: str) -> str:
        async with connect(gw.url + "/mcp", "legacy", authorization=f"Bearer {TOKENS[who]}") as client:
            return str(client.instructions)

    assert (await in_thread(instructions("alice"))).endswith("Services: fx.")
    assert (await in_thread(instructions("root"))).endswith("Services: fx, fx2.")


# -- the evaluator alone ---------------------------------------------------------------------


def request(who: str, role: str, service: str, tool: str, **arguments: Any) -> CallRequest:
    return CallRequest(Principal(who, role), service, tool, arguments, "s1", "rest")


@pytest.mark.parametrize(
    ("constraint", "good", "bad", "message"),
    [
        ({"equals": "r"}, "r", "w", "must be 'r'"),
        ({"one_of": ["r", "rw"]}, "rw", "w", "must be one of 'r', 'rw'"),
        ({"pattern": "[a-z]+\\.txt"}, "a.txt", "a.txt.exe", "must match '[a-z]+\\\\.txt'"),
        ({"prefix": "/data/", "pattern": "[^.]*"}, "/data/x", "/data/../etc/passwd", "must match"),
        ({"max_length": 3}, "abc", "abcd", "at most 3 characters"),
    ],
)
def test_argument_constraints(constraint: dict[str, Any], good: str, bad: str, message: str) -> None:
    raw = {
        "services": {"fs": fixture_service()},
        "policy": {"default": "allow", "rules": [{"principals": ["*"], "arguments": {"fs/read_*": {"p": constraint}}}]},
    }
    policy = RulePolicy.from_config(parse_config(raw))
    assert policy is not None
    policy.admit(request("alice", "agent", "fs", "read_file", p=good))
    policy.admit(request("alice", "agent", "fs", "write_file", p=bad))  # another tool: no constraint
    with pytest.raises(Forbidden) as refused:
        policy.admit(request("alice", "agent", "fs", "read_file", p=bad))
    assert refused.value.code == "forbidden_argument"
    assert message in refused.value.message
    assert policy.visible(Principal("alice", "agent"), "fs", "read_file"), "constraints never hide a tool"


def test_default_allow_with_deny_lists_and_allow_lists() -> None:
    raw = {
        "services": {"fs": fixture_service(), "todo": fixture_service()},
        "policy": {
            "default": "allow",
            "rules": [
                {"roles": ["agent"], "deny": ["fs/delete_*"]},
                {"principals": ["intern"], "allow": ["todo"]},
            ],
        },
    }
    policy = RulePolicy.from_config(parse_config(raw))
    assert policy is not None
    agent, intern, admin = Principal("a", "agent"), Principal("intern", "agent"), Principal("ops", "admin")
    assert policy.visible(agent, "fs", "read_file") and not policy.visible(agent, "fs", "delete_file")
    assert policy.visible(admin, "fs", "delete_file"), "no rule names the admin: the default"
    assert policy.visible(intern, "todo", "add") and not policy.visible(intern, "fs", "read_file")
    assert policy.visible_service(intern, "todo") and not policy.visible_service(intern, "fs")


@pytest.fixture
def policy_warnings() -> Iterator[list[str]]:
    configure("INFO")
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") in ("mcpgateway.policy", "mcpgateway.budgets"):
            from twisted.logger import formatEvent

            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_globs_matching_no_service_and_unknown_principals_are_warned(policy_warnings: list[str]) -> None:
    raw = {
        "server": SERVER,
        "services": {"fx": fixture_service()},
        "policy": {"default": "deny", "rules": [{"principals": ["alice", "mallory"], "allow": ["f*", "zz*/x"]}]},
        "budgets": [{"principals": ["eve"], "service": "fx", "limit": "1/day"}],
    }
    governance = Governance.from_config(parse_config(raw))
    governance.close()
    assert policy_warnings == [
        "policy.rules[0].principals[1]: no configured principal is named 'mallory'",
        "policy.rules[0].allow[1]: 'zz*/x' matches no configured service",
        "budgets[0].principals[0]: no configured principal is named 'eve'",
    ]


# -- configuration errors ------------------------------------------------------------------------

RULE = {"roles": ["agent"], "allow": ["fx"]}
BUDGET = {"principals": ["*"], "service": "fx", "limit": "10 per day"}


def rules(*more: dict[str, Any]) -> dict[str, Any]:
    return {"policy": {"default": "deny", "rules": [RULE, *more]}}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"policy": {"rules": [RULE]}}, "policy.default: missing (allow or deny"),
        ({"policy": {"default": "maybe"}}, "policy.default: expected allow or deny, got 'maybe'"),
        ({"policy": {"default": "deny", "rules": {}}}, "policy.rules: expected a list of rules"),
        ({"policy": {"default": "deny", "rulez": []}}, "policy.rulez: unknown key"),
        (rules({"allow": ["fx"]}), "policy.rules[1]: name the principals and/or roles"),
        (rules({"roles": ["agent"]}), "policy.rules[1]: give allow, deny and/or arguments"),
        (rules({"roles": ["agnet"], "deny": ["fx"]}), "policy.rules[1].roles[0]: expected one of admin, agent"),
        (rules({"roles": ["agent"], "alow": ["fx"]}), "policy.rules[1].alow: unknown key"),
        (
            rules({"roles": ["agent"], "deny": ["fx", "fx//x"]}),
            "policy.rules[1].deny[1]: 'fx//x' is not a",
        ),
        (rules({"roles": ["agent"], "deny": ["fx/a b"]}), "policy.rules[1].deny[0]: 'fx/a b' is not a tool pattern"),
        (rules({"roles": ["agent"], "deny": "fx"}), "policy.rules[1].deny: expected a list of tool patterns"),
        (rules({"roles": ["agent"], "allow": ["nope/echo"]}), "policy.rules[1].allow[0]: no service named 'nope'"),
        (rules({"principals": [""], "deny": ["fx"]}), "policy.rules[1].principals[0]: a principal name is"),
        (
            rules({"roles": ["agent"], "arguments": {"fx/echo": {"text": {"pattern": "("}}}}),
            "policy.rules[1].arguments.fx/echo.text.pattern: not a regular expression",
        ),
        (
            rules({"roles": ["agent"], "arguments": {"fx/echo": {"text": {}}}}),
            "policy.rules[1].arguments.fx/echo.text: give at least one of equals, max_length, one_of",
        ),
        (
            rules({"roles": ["agent"], "arguments": {"fx/echo": {"text": {"max_length": 0}}}}),
            "policy.rules[1].arguments.fx/echo.text.max_length: must be greater than zero",
        ),
        (
            rules({"roles": ["agent"], "arguments": {"fx/echo": {"text": {"one_of": []}}}}),
            "policy.rules[1].arguments.fx/echo.text.one_of: expected a non-empty list",
        ),
        (
            rules({"roles": ["agent"], "arguments": {"fx/echo": {"text": {"suffix": "x"}}}}),
            "policy.rules[1].arguments.fx/echo.text.suffix: unknown key",
        ),
        (
            rules({"roles": ["agent"], "arguments": {"nope/x": {"p": {"prefix": "/"}}}}),
            "policy.rules[1].arguments.nope/x: no service named 'nope' (services: fx)",
        ),
        ({"budgets": [{"principals": ["*"], "limit": "1 per day"}]}, "budgets[0].service: missing"),
        (
            {"budgets": {"rules": [BUDGET, {"service": "fx", "limit": "1/day"}]}},
            "budgets.rules[1]: name the principals",
        ),
        ({"budgets": {"rules": [{**BUDGET, "limit": " "}]}}, "budgets.rules[0].limit: expected a limit"),
        ({"budgets": {"rules": [{**BUDGET, "service": "nope"}]}}, "budgets.rules[0].service: no service named 'nope'"),
        ({"budgets": {"rules": [{**BUDGET, "service": "fx/echo"}]}}, "budgets.rules[0].service: expected a service"),
        ({"budgets": {"rules": [{**BUDGET, "service": ""}]}}, "budgets.rules[0].service: expected a service"),
        ({"budgets": {"rules": [{**BUDGET, "tool": "a/b"}]}}, "budgets.rules[0].tool: expected a tool name or glob"),
        ({"budgets": {"rules": [{**BUDGET, "limit": "lots"}]}}, "budgets.rules[0].limit: cannot parse 'lots'"),
        ({"budgets": [BUDGET, {**BUDGET, "limit": "0 per day"}]}, "budgets[1].limit: '0 per day' allows no request"),
        ({"budgets": {"storage_uri": "ftp://x", "rules": [BUDGET]}}, "budgets.storage_uri: unsupported storage"),
        ({"budgets": {"rules": BUDGET}}, "budgets.rules: expected a list of budgets"),
    ],
)
def test_bad_governance_names_the_key_path(sections: dict[str, Any], message: str) -> None:
    raw = {"services": {"fx": fixture_service()}, **sections}
    with pytest.raises(ConfigError) as info:
        Governance.from_config(parse_config(raw)).close()
    assert message in str(info.value)


def test_bad_budget_stops_the_start_and_a_good_one_is_wired(tmp_path: Path) -> None:
    def write(**sections: Any) -> str:
        raw = {
            "server": {"auth_user": "u", "auth_password": "0123", "port": 0},
            "services": {"fx": {"command": [sys.executable, "-c", "pass"]}},
            "session": {"sandbox_dir": str(tmp_path / "sandbox")},
            **sections,
        }
        path = tmp_path / "config.json"
        path.write_text(json.dumps(raw))
        return str(path)

    path = write(budgets=[{**BUDGET, "limit": "often"}])
    with pytest.raises(StartRefused) as info:
        Options().parseOptions(["--config", path])
    assert f"{path}: budgets[0].limit: cannot parse 'often'" in str(info.value)

    options = Options()
    options.parseOptions(["--config", write(**rules(), budgets=[BUDGET])])
    governance = options["governance"]
    try:
        assert [type(policy) for policy in governance.policies] == [RulePolicy, BudgetPolicy]  # rules first
    finally:
        governance.close()
    options = Options()
    options.parseOptions(["--config", write()])
    assert options["governance"].policies == [], "nothing configured: nothing to pay per call"


# -- budgets ---------------------------------------------------------------------------------------

BUDGETS = {
    "rules": [
        {"principals": ["alice"], "service": "fx", "limit": "4 per hour"},
        {"roles": ["agent"], "service": "fx", "tool": "echo", "limit": "2 per hour"},
    ]
}
DENY_FAIL = {"default": "allow", "rules": [{"principals": ["alice"], "deny": ["fx/fail"]}]}


@pytest.mark.parametrize("mode", MODES)
@pytest_twisted.ensureDeferred
async def test_budgets_count_each_call_once_on_both_doors(governed: Any, mode: str) -> None:
    gw, _ = governed({"fx": fixture_service()}, server=SERVER, policy=DENY_FAIL, budgets=BUDGETS)
    response, _ = await call(gw, "alice", "fx", "echo", {"text": "1"})  # fx 1/4, echo 1/2
    assert response.code == 200
    _, outcomes = await in_thread(mcp_use(gw.url + "/mcp", mode, "alice", [("fx.echo", {"text": "2"})]))
    assert outcomes[0].content[0].text == "2"  # fx 2/4, echo 2/2
    response, body = await call(gw, "alice", "fx", "echo", {"text": "3"})
    assert (response.code, body["code"]) == (429, "budget_exhausted")
    assert (body["service"], body["tool"], body["limit"]) == ("fx", "echo", "2 per 1 hour")
    assert body["error"].startswith("the budget of 2 per 1 hour calls to fx (tool echo) for alice is spent")
    assert 3500 <= int(response.headers.getRawHeaders(b"Retry-After")[0]) <= 3600
    # a refusal by the echo budget spent nothing of the service's; a forbidden call spends nothing
    response, body = await call(gw, "alice", "fx", "fail")
    assert (response.code, body["code"]) == (403, "forbidden_tool")
    response, _ = await call(gw, "alice", "fx", "add", {"a": 1, "b": 2})  # fx 3/4
    assert response.code == 200
    _, outcomes = await in_thread(
        mcp_use(gw.url + "/mcp", mode, "alice", [("fx.add", {"a": 1, "b": 1}), ("fx.add", {"a": 2, "b": 2})])
    )
    assert outcomes[0].content[0].text == "2"  # fx 4/4
    refusal = outcomes[1]
    assert refusal.code == -32603 and refusal.data["reason"] == "budget_exhausted"
    assert refusal.data["status"] == 429 and 3500 <= refusal.data["retry_after"] <= 3600
    assert refusal.data["tool"] == "*"
    # bob's echo budget is his own
    response, _ = await call(gw, "bob", "fx", "echo", {"text": "b"})
    assert response.code == 200

    response, body = await gw.request("GET", "/budgets", **bearer("alice"))
    assert (response.code, body["code"]) == (403, "forbidden")
    response, report = await gw.request("GET", "/budgets", **bearer("root"))
    assert response.code == 200
    assert (report["storage"], report["shared"], report["degraded"]) == ("memory://", False, False)
    rows = {(row["principal"], row["tool"], row["limit"]): row for row in report["budgets"]}
    # every configured principal a budget names, used or not; root (admin) is named by none
    assert set(rows) == {
        ("alice", "*", "4 per 1 hour"),
        ("alice", "echo", "2 per 1 hour"),
        ("bob", "echo", "2 per 1 hour"),
        ("carol", "echo", "2 per 1 hour"),
        ("dave", "echo", "2 per 1 hour"),
    }
    assert {key: (row["used"], row["remaining"]) for key, row in rows.items()} == {
        ("alice", "*", "4 per 1 hour"): (4, 0),
        ("alice", "echo", "2 per 1 hour"): (2, 0),
        ("bob", "echo", "2 per 1 hour"): (1, 1),
        ("carol", "echo", "2 per 1 hour"): (0, 2),
        ("dave", "echo", "2 per 1 hour"): (0, 2),
    }
    assert rows[("alice", "*", "4 per 1 hour")]["budgets"] == ["budgets.rules[0]"]
    assert rows[("alice", "*", "4 per 1 hour")]["reset_at"].endswith("Z")
    assert rows[("carol", "echo", "2 per 1 hour")]["reset_at"] is None

    _, text = await gw.request("GET", "/metrics")
    metrics = text.decode()
    assert 'mcpgateway_budget_remaining{limit="4 per 1 hour",principal="alice",service="fx",tool="*"} 0.0' in metrics
    assert 'mcpgateway_budget_remaining{limit="2 per 1 hour",principal="bob",service="fx",tool="echo"} 1.0' in metrics
    assert 'mcpgateway_budget_remaining{limit="2 per 1 hour",principal="carol",service="fx",tool="echo"} 2.0' in metrics
    refused = 'mcpgateway_tool_call_seconds_count{outcome="budget_exhausted",service="fx",tool="%s"} 1.0'
    assert refused % "echo" in metrics and refused % "add" in metrics
    assert 'mcpgateway_rate_limited_total{group="call"}' not in metrics, "a spent budget is not a rate limit"


@pytest_twisted.ensureDeferred
async def test_budgets_in_redis_are_shared_by_two_gateways(governed: Any, tmp_path: Path) -> None:
    budgets = {"rules": [{"principals": ["alice"], "service": "fx", "limit": "3 per hour"}]}
    with redis_server_at(tmp_path) as redis:
        # one inherits rate_limiting.storage_uri, the other names budgets.storage_uri
        first, _ = governed(
            {"fx": fixture_service()}, server=SERVER, budgets=budgets, rate_limiting={"storage_uri": redis.uri}
        )
        second, _ = governed({"fx": fixture_service()}, server=SERVER, budgets={**budgets, "storage_uri": redis.uri})
        codes = []
        for gw in (first, second, first, second):
            response, body = await call(gw, "alice", "fx", "echo", {"text": "x"})
            codes.append(body.get("code", response.code))
        assert codes == [200, 200, 200, "budget_exhausted"]
        assert redis.client().get("mcpgateway:LIMITER/budget/alice/fx/*/3/1/hour") == b"3"

        response, report = await first.request("GET", "/budgets", **bearer("root"))
        assert response.code == 200
        assert (report["storage"], report["shared"]) == (redis.uri, True)
        (row,) = report["budgets"]
        assert (row["principal"], row["used"], row["remaining"]) == ("alice", 3, 0)


def test_a_budget_counts_inline_on_memory_and_budgets_sharing_a_counter_count_once() -> None:
    raw = {
        "services": {"fx": fixture_service()},
        "budgets": [
            {"roles": ["agent"], "service": "*", "limit": "2 per hour"},
            {"principals": ["alice"], "service": "fx", "limit": "2/hour"},  # the same counter
            {"principals": ["alice"], "service": "fx", "tool": "add", "limit": "10 per hour"},
        ],
    }
    policy = BudgetPolicy.from_config(parse_config(raw))
    assert policy is not None
    try:
        outcomes: list[Any] = []
        for _ in range(3):
            waiting = policy.admit(request("alice", "agent", "fx", "echo"))
            assert isinstance(waiting, Deferred)
            waiting.addBoth(outcomes.append)
        assert len(outcomes) == 3, "memory storage: decided at once, no thread"
        assert outcomes[:2] == [None, None]
        assert isinstance(outcomes[2].value, BudgetExhausted)
        assert outcomes[2].value.details == {"service": "fx", "tool": "*", "limit": "2 per 1 hour"}
        assert policy.admit(request("ops", "admin", "fx", "echo")) is None, "no budget names the admin"
    finally:
        policy.close()


def test_refusals_are_security_events() -> None:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "security_event" in event:
            events.append(event)

    raw = {
        "services": {"fx": fixture_service()},
        "policy": {"default": "allow", "rules": [{"principals": ["*"], "deny": ["fx/fail"]}]},
        "budgets": [{"principals": ["*"], "service": "fx", "limit": "1 per hour"}],
    }
    governance = Governance.from_config(parse_config(raw))
    rules, budgets = governance.rules, governance.budgets
    assert rules is not None and budgets is not None
    globalLogPublisher.addObserver(observe)
    try:
        with pytest.raises(Forbidden):
            rules.admit(request("alice", "agent", "fx", "fail"))
        for _ in range(2):
            waiting = budgets.admit(request("alice", "agent", "fx", "echo"))
            assert waiting is not None
            waiting.addErrback(lambda failure: failure.trap(BudgetExhausted))
    finally:
        globalLogPublisher.removeObserver(observe)
        governance.close()
    assert [(e["security_event"], e["principal"], e["details"]) for e in events] == [
        ("forbidden", "alice", {"code": "forbidden_tool"}),
        ("budget_exhausted", "alice", {"service": "fx", "tool": "*", "limit": "1 per 1 hour"}),
    ]
    assert events[0]["route"] == "tools/call fx/fail (rest)"
