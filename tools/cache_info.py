"""Describe a vitkd sparse teacher-logit cache: `python tools/cache_info.py DIR [--verify] [--no-progress]`.

Prints the manifest, sizes and epochs present; with --verify also every record's CRC32 check. Exit status 0 when
the cache is usable, 1 when files are missing/truncated or records fail, 2 when DIR is not a readable cache.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from vitkd.cache.info import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
