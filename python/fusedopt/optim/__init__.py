"""The optimizer classes: one small module per rule, on FusedOptimizer (base.py)."""
