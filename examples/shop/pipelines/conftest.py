import ingestkit

TABLES = [
    """
    CREATE TABLE IF NOT EXISTS countries (
        id   serial PRIMARY KEY,
        code text NOT NULL UNIQUE,
        name text NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS customers (
        id         int PRIMARY KEY,
        name       text NOT NULL,
        email      text NOT NULL UNIQUE,
        country_id int NOT NULL REFERENCES countries (id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS orders (
        id          int PRIMARY KEY,
        customer_id int NOT NULL REFERENCES customers (id),
        amount      numeric(12, 2) NOT NULL CHECK (amount >= 0),
        ordered_at  date NOT NULL
    )
    """,
]


@ingestkit.fixture(scope="batch", autouse=True)
def schema(db):
    """Create the shop tables if they do not exist yet."""
    for statement in TABLES:
        db.execute(statement)
