"""Benchmarks operators run on their own hosts (`ebk bench ...`): what encryption costs
the database itself, measured where it runs rather than asserted."""
