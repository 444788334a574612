"""medtui's benchmarks: tools of the source tree that print numbers (never pass/fail), not shipped in the wheel.

Run one as ``medtui bench NAME`` or ``python benchmarks/bench_NAME.py`` (``--help`` says what it measures).
"""
