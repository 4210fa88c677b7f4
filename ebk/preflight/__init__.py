"""Volume-encryption preflight: is every path that holds database bytes encrypted at rest?

paths (what to check) -> inspect (mount, filesystem, block stack) -> one
detector module per technology -> model (verdicts) -> report/gate.
"""
