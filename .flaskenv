# Read by `flask` (python-dotenv) run anywhere in this checkout: the example bank, so that
# `.venv/bin/flask obdcr clients list` needs no --app (nor an activated venv). Its state is
# ./instance, as `make serve` leaves it. --app, or FLASK_APP set in the shell, wins.
FLASK_APP=example_app
