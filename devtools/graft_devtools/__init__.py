"""Graft's development fixtures, a distribution of their own (`devtools/`, installed
editable by `make setup`): what tests, `bench/` and `scripts/` share and the service never
needs. No `graft` module imports it (tests/unit/test_architecture.py checks); it imports no
`graft` module either, so `scripts/make_demo_data.py` runs without the service installed.

- `graft_devtools.datasets`: small real datasets from files already on the machine
  (Fashion-MNIST, scikit-learn's digits, the sample photos of scikit-image and scikit-learn).
"""
