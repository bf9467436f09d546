"""``python -m merge_engine`` is ``merge-engine``."""

from .cli import main

raise SystemExit(main())
