"""The table the tickets go into, created once per batch."""

import ingestkit


@ingestkit.fixture(scope="batch", autouse=True)
def tickets_table(db):
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS tickets (
            id          int PRIMARY KEY,
            title       text NOT NULL CHECK (title <> ''),
            updated_at  timestamptz NOT NULL
        )
        """
    )
