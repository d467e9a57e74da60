"""Where `python -m data.prebatch`, the old entry point, now leads: prebatching is `python prebatch.py`
(the library it runs is data/shuffle.py). Run as a module, this says so in one line, exit code 2."""

import sys

MOVED = "`python -m data.prebatch` is now `python prebatch.py` (the same flags; --help lists them)"

if __name__ == "__main__":
    print(f"error: {MOVED}", file=sys.stderr)
    sys.exit(2)
