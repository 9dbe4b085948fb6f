from kvassert.cli import main

raise SystemExit(main())
