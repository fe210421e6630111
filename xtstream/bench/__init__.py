"""Benchmark runners behind ``xtstream bench``: measurements that need a trained model or a
sweep, kept out of the library modules they measure."""


def text_table(rows: list[list], header: list[str]) -> str:
    """Aligned text columns under ``header``, a rule below it: what benchmarks print."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
