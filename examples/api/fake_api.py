"""A stand-in for the tickets API, to try the example: python fake_api.py [PORT].

Serves data/tickets.json on 127.0.0.1 (default port 8765) as
GET /tickets?updated_since=T&limit=N&cursor=C, and wants the header
"Authorization: Bearer example-token". Edit the file while it runs to see the
next ingestkit run fetch only what changed.
"""

import http.server
import json
import sys
import urllib.parse
from pathlib import Path

DATA = Path(__file__).parent / "data" / "tickets.json"
TOKEN = "example-token"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if parts.path != "/tickets":
            return self.answer(404, {"error": "not found"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.answer(401, {"error": "bad token"})
        since = query.get("updated_since", "")
        changed = sorted(
            (t for t in json.loads(DATA.read_text()) if t["updated_at"] >= since),
            key=lambda t: (t["updated_at"], t["id"]),
        )
        start, limit = int(query.get("cursor", "0")), int(query.get("limit", "50"))
        page = changed[start : start + limit]
        more = start + len(page) < len(changed)
        self.answer(200, {"tickets": page, "next_cursor": str(start + len(page)) if more else None})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    print(f"tickets API on http://127.0.0.1:{port}/tickets (token: {TOKEN})")
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
