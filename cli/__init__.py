"""The `oms` command line: client commands, the local stack (`up`/`down`/`status`) and the demo."""
