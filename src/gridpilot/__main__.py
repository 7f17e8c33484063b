from gridpilot.cli import main

raise SystemExit(main())
