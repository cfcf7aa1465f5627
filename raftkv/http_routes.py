"""The routes of a node's HTTP/JSON face, for people, curl and the seed system's clients,
served by `raftkv.http_server`. `raftkv serve` starts it beside the node (`serve_http`).

``POST /command`` takes ``{"op", "key", "value", "expected"}``;
``GET /read/<key>`` (optional ``?mode=``) reads; ``GET /status`` describes the
node. Answers are the node's client responses: ``ok`` true, false (certainly
not done) or null (unknown).

``GET /members``: the configuration as this node knows it (`Node.members`: voters,
learners, each member's addresses, the leader). ``POST /members`` takes
``{"op": "add-learner"|"promote"|"remove", "id", "address", "http"}`` (the addresses for
add-learner: ``address`` the new member's peer HOST:PORT, required; ``http`` optional) on
the leader, and answers once the change is applied (`Node.change_member`); a refusal is
409 ``{"ok": false, "error": "conf_change", "reason", "retryable", "message"}``, another
node answers ``not_leader`` with the leader's addresses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raftkv.http_server import Request, error_body, start_http_server
from raftkv.kv import BadRequest
from raftkv.members import parse_change

if TYPE_CHECKING:
    import asyncio

    from raftkv.node import Node

__all__ = ["serve_http"]


def _bad(message: str) -> tuple[int, dict[str, object]]:
    return 400, error_body("bad_request", message)


async def _route(node: Node, req: Request) -> tuple[int, object]:
    if req.path == "/status":
        if req.method != "GET":
            return 405, error_body("method_not_allowed", "use GET")
        return 200, node.status()
    if req.path.startswith("/read/"):
        if req.method != "GET":
            return 405, error_body("method_not_allowed", "use GET")
        request: dict[str, Any] = {"op": "get", "key": req.path[len("/read/") :]}
        if "mode" in req.query:
            request["mode"] = req.query["mode"]
        return _status_of(await node.handle(request))
    if req.path == "/command":
        if req.method != "POST":
            return 405, error_body("method_not_allowed", "use POST")
        body = req.json() if req.body else None
        if not isinstance(body, dict):
            return _bad("body must be a JSON object")
        return _status_of(await node.handle(body))
    if req.path == "/members":
        return await _members(node, req)
    return 404, error_body("not_found", f"no route {req.path!r}")


async def _members(node: Node, req: Request) -> tuple[int, object]:
    if req.method == "GET":
        return 200, {"ok": True, **node.members()}
    if req.method != "POST":
        return 405, error_body("method_not_allowed", "use GET or POST")
    body = req.json() if req.body else None
    if not isinstance(body, dict):
        return _bad("body must be a JSON object")
    try:
        change = parse_change(*(body.get(f) for f in ("op", "id", "address", "http")))
    except BadRequest as exc:
        return _bad(str(exc))
    resp = await node.change_member(change)
    return (409 if resp.get("error") == "conf_change" else 200), resp


def _status_of(resp: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return (400 if resp.get("error") == "bad_request" else 200), resp


async def serve_http(node: Node, host: str, port: int) -> asyncio.Server:
    """Serve `node`'s routes on host:port (port 0: any free port) until `server.close()`."""

    async def handler(req: Request) -> tuple[int, object]:
        return await _route(node, req)

    return await start_http_server(host, port, handler)
