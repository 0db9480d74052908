"""The experiments behind RESULTS.md, how to run them resumably, and the report built from
their records (see results/experiments.py)."""
