"""``python -m merge_engine`` is ``merge-engine``."""

from merge_engine.cli import main

raise SystemExit(main())
