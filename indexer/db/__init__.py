"""What every stage shares about the database beyond opening it (store.py): the status
vocabulary, the counts, the one read-only connection, and the upkeep of the search queue.

Imports only store.py and errors.py, so the ingest, watch, export and inspect stages can all use it.
"""
