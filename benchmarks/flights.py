"""A deterministic flights-like data set: facts with three dimension codes per row."""

from __future__ import annotations

import csv
import random
from pathlib import Path

CARRIERS = [f"C{i:02d}" for i in range(16)]
AIRPORTS = [f"A{i:03d}" for i in range(100)]
HEADER = [
    "id",
    "year",
    "month",
    "day",
    "carrier",
    "flight",
    "origin",
    "dest",
    "dep_delay",
    "distance",
]

DIMENSIONS_SQL = """
CREATE TABLE carriers (id serial PRIMARY KEY, code text UNIQUE NOT NULL, name text NOT NULL);
CREATE TABLE airports (id serial PRIMARY KEY, code text UNIQUE NOT NULL, name text NOT NULL);
CREATE TABLE flights (
    id int PRIMARY KEY, flown_on date NOT NULL, carrier_id int NOT NULL REFERENCES carriers (id),
    flight int NOT NULL, origin_id int NOT NULL REFERENCES airports (id),
    dest_id int NOT NULL REFERENCES airports (id), dep_delay int, distance int NOT NULL
);
CREATE TABLE flights_checked (LIKE flights INCLUDING ALL, CHECK (distance > 0));
"""


def write_csv(
    path: Path,
    rows: int,
    bad_every: int = 100,
    seed: int = 7,
    missing: float = 0.0,
    negative: float = 0.0,
) -> int:
    """Write ``rows`` flights; every ``bad_every``-th is bad (unknown carrier or
    a non-numeric distance). Returns how many are bad.

    ``missing``: the share of rows, at random, whose carrier or an airport is not
    in the dimension tables (as real airline data: unknown codes, airports outside
    the table), from a few hundred distinct unknown codes. ``negative``: the share
    with a negative distance, which the ``flights_checked`` table rejects.
    """
    rnd = random.Random(seed)
    bad = 0
    unknown = [f"X{i:03d}" for i in range(750)]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(HEADER)
        for i in range(1, rows + 1):
            carrier = rnd.choice(CARRIERS)
            origin, dest = rnd.choice(AIRPORTS), rnd.choice(AIRPORTS)
            distance = str(rnd.randint(80, 4000))
            if bad_every and i % bad_every == 0:
                bad += 1
                if (i // bad_every) % 2:
                    carrier = "ZZ"  # no such carrier: the lookup fails
                else:
                    distance = "n/a"  # not a number: the processor fails
            elif missing and rnd.random() < missing:
                bad += 1
                which = rnd.randrange(3)
                if which == 0:
                    carrier = rnd.choice(unknown)
                elif which == 1:
                    origin = rnd.choice(unknown)
                else:
                    dest = rnd.choice(unknown)
            elif negative and rnd.random() < negative:
                bad += 1
                distance = str(-rnd.randint(1, 4000))
            out.writerow(
                [
                    i,
                    2013,
                    rnd.randint(1, 12),
                    rnd.randint(1, 28),
                    carrier,
                    rnd.randint(1, 6000),
                    origin,
                    dest,
                    rnd.randint(-20, 300),
                    distance,
                ]
            )
    return bad


def create_dimensions(conn) -> None:  # noqa: ANN001
    with conn.cursor() as cur:
        cur.execute(
            "DROP TABLE IF EXISTS flights, flights_checked, carriers, airports, outcomes,"
            " flights_raw CASCADE"
        )
        cur.execute(DIMENSIONS_SQL)
        cur.executemany(
            "INSERT INTO carriers (code, name) VALUES (%s, %s)",
            [(c, f"Carrier {c}") for c in CARRIERS],
        )
        cur.executemany(
            "INSERT INTO airports (code, name) VALUES (%s, %s)",
            [(a, f"Airport {a}") for a in AIRPORTS],
        )
    conn.commit()
