import ingestkit


@ingestkit.source(ingestkit.read_csv("../data/countries.csv"), key="code")
def process_country(record, db):
    db.upsert("countries", record, conflict="code")
