"""Benchmark runners behind ``xtstream bench``: measurements that need a trained model or a
sweep, kept out of the library modules they measure."""
