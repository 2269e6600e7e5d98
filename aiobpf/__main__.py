from aiobpf.cli import main

raise SystemExit(main())
