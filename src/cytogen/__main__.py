"""``python -m cytogen`` (also how Lightning relaunches the ranks of a DDP run)."""

import sys

from cytogen.cli import main

if __name__ == "__main__":
    sys.exit(main())
