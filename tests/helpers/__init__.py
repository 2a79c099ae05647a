"""Code the tests and the benchmarks share: tiny data sets and run arguments (tiny_data), the
dashboard's small runs root and browser helpers (dashboard_support), torchrun worlds in one
process (distributed_support). Benchmarks put tests/ on sys.path and import `helpers.*`."""
