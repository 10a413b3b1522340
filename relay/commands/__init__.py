"""One module per `relay` command; see relay/cli.py."""
