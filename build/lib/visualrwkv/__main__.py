"""`python -m visualrwkv ...` is `visualrwkv ...`."""

import sys

from visualrwkv.cli import main

sys.exit(main())
