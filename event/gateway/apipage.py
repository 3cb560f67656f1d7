"""The gateway's API as a page a person reads (``GET /api``), written from the same OpenAPI document that
``/openapi.json`` serves, so the two cannot disagree. Plain HTML, no script: it needs nothing but the
dashboard's stylesheet."""

from __future__ import annotations

import html
from typing import Any

JSON_TYPE = "-H 'Content-Type: application/json'"
INTRO = (
    '<p>Every answer is JSON; an error is <code>{"error": "what is wrong"}</code> with a 4xx or 5xx '
    "status. With a token (<code>--token-file</code>) every call needs <code>Authorization: Bearer "
    "&lt;token&gt;</code>. Query parameters a route does not take are refused (400), so a typo is never "
    'ignored. The machine-readable form of this page is <a href="openapi.json">/openapi.json</a>.</p>\n'
    '<pre class="example" tabindex="0">'
    + html.escape(
        f"curl -X POST localhost:8080/publish/shop.order_placed {JSON_TYPE} -d '{{\"order\": 42}}'\n"
        f"curl -X POST 'localhost:8080/publish/shop.reminder?in=300' {JSON_TYPE} -d '{{\"order\": 42}}'\n"
        f"curl -X POST 'localhost:8080/publish/shop.order_placed?mandatory=true' {JSON_TYPE} -d '{{}}'\n"
        "curl localhost:8080/api/queues"
    )
    + "</pre>"
)


def _e(value: object) -> str:
    return html.escape(str(value))


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    if "enum" in schema:
        text += ": " + ", ".join(map(str, schema["enum"]))
    if "minimum" in schema or "maximum" in schema:
        text += f" ({schema.get('minimum', '')}..{schema.get('maximum', '')})"
    return text


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    anchor = op.get("operationId", f"{method}-{path}")
    parts = [
        f'<section class="operation" id="{_e(anchor)}">',
        f"<h3><code>{_e(method.upper())} {_e(path)}</code></h3>",
        f"<p>{_e(op.get('summary', ''))}</p>",
    ]
    params = op.get("parameters", [])
    if params:
        parts.append(
            "<table><thead><tr><th>parameter</th><th>in</th><th>type</th><th>required</th>"
            "<th>meaning</th></tr></thead><tbody>"
        )
        for p in params:
            parts.append(
                f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                f"<td>{_e(_type(p.get('schema', {})))}</td><td>{'yes' if p.get('required') else 'no'}</td>"
                f"<td>{_e(p.get('description', ''))}</td></tr>"
            )
        parts.append("</tbody></table>")
    body = op.get("requestBody")
    if body:
        types = ", ".join(body.get("content", {}))
        parts.append(f"<p>Body: {_e(types)}. {_e(body.get('description', ''))}</p>")
    parts.append("<table><thead><tr><th>status</th><th>when</th></tr></thead><tbody>")
    for code, answer in op.get("responses", {}).items():
        parts.append(f"<tr><td>{_e(code)}</td><td>{_e(answer.get('description', ''))}</td></tr>")
    parts.append("</tbody></table></section>")
    return "\n".join(parts)


def render_api_page(document: dict[str, Any]) -> str:
    """The HTML page describing every operation of ``document``."""
    info = document.get("info", {})
    operations = [
        _operation(path, method, op)
        for path, methods in document.get("paths", {}).items()
        for method, op in methods.items()
    ]
    index = "".join(
        f'<li><a href="#{_e(op.get("operationId", ""))}">'
        f"<code>{_e(method.upper())} {_e(path)}</code></a></li>"
        for path, methods in document.get("paths", {}).items()
        for method, op in methods.items()
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(info.get("title", "API"))} {_e(info.get("version", ""))}: the HTTP API</title>
<link rel="icon" href="static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="static/style.css">
</head>
<body>
<header><h1>{_e(info.get("title", "API"))}: the HTTP API</h1><a href="./">dashboard</a></header>
<main class="api">
<p>{_e(info.get("description", ""))}</p>
{INTRO}
<nav aria-label="operations"><ul>{index}</ul></nav>
{"".join(operations)}
</main>
</body>
</html>
"""
