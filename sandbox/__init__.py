"""Sandbox: real HTTP implementations of the ledger and payout providers.

See docs/protocols.md for the contract; `python -m sandbox --config PATH` runs it.
"""
