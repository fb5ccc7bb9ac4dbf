"""Job lifecycle: the one seam routers, the CLI and the web page use."""
