"""The benchmark suite (issue 8): ``python -m bench --help``.

Each scenario (b1..b5) measures the product and a baseline side by side in
the same run, interleaved and repeated, and reports median, min and max
against the issue's targets. The suite runs from the repository (it is not
an installed package) and touches only loopback and its own databases.
"""
