import datetime

import ingestkit


@ingestkit.source(ingestkit.read_csv("../data/orders.csv"), key="order_id")
def process_order(record, db, parse_amount):
    order = {
        "id": int(record["order_id"]),
        "customer_id": int(record["customer_id"]),
        "amount": parse_amount(record["amount"]),
        "ordered_at": datetime.date.fromisoformat(record["ordered_at"]),
    }
    db.insert("orders", order)
