"""A stand-in for the parts of lightly 1.6.0 that benchmarks/vs_lightly.py uses, so that its test
runs without PyPI: the same names and call signatures, modules built as lightly builds them. Not
lightly: its figures are no measure of lightly's. Used as `vs_lightly.py --lightly-from
tests/lightly_standin`; for the real comparison run the benchmark without that option."""

__version__ = "1.6.0-standin"
