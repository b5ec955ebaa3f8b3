import ingestkit


@ingestkit.source(ingestkit.read_csv("../data/customers.csv"), key="customer_id")
def process_customer(record, db, lookup):
    customer = {
        "id": record["customer_id"],  # a string: PostgreSQL parses it for the int column
        "name": record["name"],
        "email": record["email"],
        "country_id": lookup("countries", code=record["country"]),
    }
    db.upsert("customers", customer)
