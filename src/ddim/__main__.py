"""`python -m ddim`: the `ddim` command."""

from ddim.cli import main

raise SystemExit(main())
