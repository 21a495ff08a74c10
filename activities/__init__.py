"""Side effects: ledger client, provider adapters, webhook signatures.

Each module is thin and classifies its errors at the edge: accepted, declined
(final) or ambiguous. Nothing here touches the database.
"""
