"""The parts of ``bench/reproduce.py``: budgets, derived configs, the run scheduler and the report."""
