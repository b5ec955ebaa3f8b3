import ingestkit


@ingestkit.source(ingestkit.read_csv("../data/customers.csv"), key="customer_id")
def process_customer(record, db, lookup):
    customer = {
        "id": int(record["customer_id"]),
        "name": record["name"],
        "email": record["email"],
        "country_id": lookup("countries", code=record["country"]),
    }
    db.insert("customers", customer)
