"""Tickets from a JSON API, loaded incrementally: each run asks only for what changed.

The API: GET /tickets?updated_since=T&limit=N[&cursor=C] answers
{"tickets": [...], "next_cursor": C or null}, oldest change first, with every
ticket changed at or after T. The high-water mark (the newest updated_at
loaded) lives in the ``state`` fixture, saved in ingestkit.state with the chunk
of the item that moved it: it never gets ahead of what is in the table.
"""

import os

import ingestkit

API_URL = os.environ.get("TICKETS_API_URL", "http://127.0.0.1:8765")
EPOCH = "1970-01-01T00:00:00Z"


def changed_tickets(state):
    """The source: every page of tickets changed since the last run's newest one."""
    return ingestkit.read_http(
        f"{API_URL}/tickets",
        params={"updated_since": state.get("updated_since", EPOCH), "limit": 2},
        # masked as ***, like a DSN password, wherever ingestkit shows or stores text
        headers={"Authorization": f"Bearer {os.environ.get('TICKETS_API_TOKEN', '')}"},
        records="tickets",
        cursor_param="cursor",
        cursor="next_cursor",
    )


@ingestkit.source(changed_tickets, key="id")
def process_ticket(record, db, state):
    db.upsert(
        "tickets",
        {"id": record["id"], "title": record["title"], "updated_at": record["updated_at"]},
        conflict=("id",),
    )
    # rolled back with this item if it fails; saved with its chunk if it succeeds
    if record["updated_at"] > state.get("updated_since", EPOCH):
        state["updated_since"] = record["updated_at"]
