"""One module per `segearth` command; cli.py registers them."""
