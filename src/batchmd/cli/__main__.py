from batchmd.cli import main

raise SystemExit(main())
