"""`python -m trainer` is `edge-trainer`."""

from trainer.cli import main

raise SystemExit(main())
