"""Kiln tested against suites it did not write: random graphs (`graph_fuzz`), random sequences
of calls of the whole API (`api_fuzz`), PyTorch's operator database (`opinfo`). The tests run a
fixed sample of each; `benchmarks/` runs them whole and writes their tables."""
