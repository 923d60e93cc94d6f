from erat.cli import main

raise SystemExit(main())
