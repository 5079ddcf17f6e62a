"""`python -m mechscope` runs the command line."""

from mechscope.cli import main

raise SystemExit(main())
