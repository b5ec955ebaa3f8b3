import datetime
from dataclasses import dataclass, field
from decimal import Decimal

import ingestkit


@dataclass
class Order:
    id: int = field(metadata={"column": "order_id"})
    customer_id: int
    amount: Decimal
    ordered_at: datetime.date


@ingestkit.source(ingestkit.read_csv("../data/orders.csv"), key="order_id")
def process_order(record: Order, db):
    db.upsert("orders", record)
