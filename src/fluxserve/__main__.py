from fluxserve.cli.main import main

raise SystemExit(main())
